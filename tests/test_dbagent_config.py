"""dbagent configuration: defaults, durations, and errors that name the key at fault."""

from __future__ import annotations

import pytest

from stackyard.dbagent.config import ConfigError, load_config, parse_config, strip_password


def test_defaults_monitor_the_store_database():
    config = parse_config({}, "postgresql://stackyard:secret@db:5432/stackyard")
    assert config.intervals == {"activity": 2, "queries": 5, "replication": 2, "locks": 2, "metrics": 1}
    assert config.retention == {"activity": 86400, "queries": 604800, "replication": 86400, "locks": 86400,
                                "deadlocks": 604800, "metrics": 86400, "alerts": 2592000}
    (instance,) = config.instances
    assert instance.name == "default"
    assert "secret" not in instance.safe_connection and "stackyard" in instance.safe_connection


def test_design_example_parses(tmp_path):
    path = tmp_path / "dbagent.yaml"
    path.write_text("""
enabled: true
database: /var/lib/stackyard/dbagent.sqlite
listen: 0.0.0.0:9188
intervals: {activity: 2s, queries: 5s, replication: 2s, locks: 2s, metrics: 1s}
retention: {activity: 24h, queries: 7d, replication: 24h, locks: 24h, deadlocks: 7d, metrics: 24h, alerts: 30d}
instances:
  - {name: primary, connection: "postgresql://monitor@db-rw:5432/app"}
alerts:
  enabled: true
  webhook_url: http://alert-receiver/hook
  rules:
    - {name: replication-lag, metric: replication_lag_seconds, op: ">", threshold: 30, for: 1m}
""")
    config = load_config(path)
    assert config.rules[0].for_seconds == 60 and config.rules[0].breached(31) and not config.rules[0].breached(30)
    assert config.retention["alerts"] == 30 * 86400


@pytest.mark.parametrize("data,key", [
    ({"intervals": {"activity": "fast"}}, "intervals.activity"),
    ({"intervals": {"bogus": "1s"}}, "intervals.bogus"),
    ({"retention": {"metrics": "-1h"}}, "retention.metrics"),
    ({"instances": [{"name": "bad name", "connection": "host=x"}]}, "instances[0].name"),
    ({"instances": [{"name": "", "connection": "host=x"}]}, "instances[0].name"),
    ({"instances": [{"name": "a", "connection": "host=x port"}]}, "instances[0].connection"),
    ({"instances": [{"name": "a", "connection": "host=x"}, {"name": "a", "connection": "host=y"}]}, "instances[1].name"),
    ({"alerts": {"rules": [{"name": "r", "metric": "m", "op": "~", "threshold": 1}]}}, "alerts.rules[0].op"),
    ({"alerts": {"rules": [{"name": "r", "metric": "m", "op": ">", "threshold": "high"}]}}, "alerts.rules[0].threshold"),
    ({"alerts": {"rules": [{"name": "r", "op": ">", "threshold": 1}]}}, "alerts.rules[0].metric"),
    ({"alerts": {"webhook_url": "ftp://x"}}, "alerts.webhook_url"),
    ({"listen": "nowhere"}, "listen"),
    ({"enabled": "yes"}, "enabled"),
    ({"surprise": 1}, "surprise"),
])
def test_errors_name_the_key(data, key):
    with pytest.raises(ConfigError) as err:
        parse_config(data, "host=localhost")
    assert err.value.key == key and str(err.value).startswith(key)


def test_password_is_stripped_from_urls_and_keyword_strings():
    assert "hunter2" not in strip_password("postgresql://u:hunter2@h:5432/d")
    assert "hunter2" not in strip_password("host=h user=u password=hunter2 dbname=d")
