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
    ({"alerts": {"rules": [{"name": "r", "metric": "connections", "op": "~", "threshold": 1}]}}, "alerts.rules[0].op"),
    ({"alerts": {"rules": [{"name": "r", "metric": "connections", "op": ">", "threshold": "high"}]}}, "alerts.rules[0].threshold"),
    ({"alerts": {"rules": [{"name": "r", "op": ">", "threshold": 1}]}}, "alerts.rules[0].metric"),
    ({"alerts": {"webhook_url": "ftp://x"}}, "alerts.webhook_url"),
    ({"listen": "nowhere"}, "listen"),
    ({"enabled": "yes"}, "enabled"),
    ({"surprise": 1}, "surprise"),
    ({"alerts": {"webhok_url": "http://x"}}, "alerts.webhok_url"),
    ({"alerts": {"rules": [{"name": "r", "metric": "connections", "op": ">", "threshold": 1, "severity": "page"}]}},
     "alerts.rules[0].severity"),
    ({"alerts": {"rules": [{"name": "r", "metric": "conections", "op": ">", "threshold": 1}]}},
     "alerts.rules[0].metric"),
    ({"alerts": {"enabled": "true"}}, "alerts.enabled"),
    ({"alerts": {"max_age": "forever"}}, "alerts.max_age"),
    ({"instances": [{"name": "a", "connection": "host=x", "port": 5432}]}, "instances[0].port"),
    ({"instances": [{"name": "a", "connection": "postgresql://db:99999/app"}]}, "instances[0].connection"),
    ({"instances": [{"name": "a", "connection": "host=db port=five"}]}, "instances[0].connection"),
    ({"listen": "0.0.0.0:70000"}, "listen"),
    ({"statement_timeout": "2ms"}, "statement_timeout"),
    ({"connect_timeout": 0}, "connect_timeout"),
    ({"intervals": {"metrics": True}}, "intervals.metrics"),
])
def test_errors_name_the_key(data, key):
    with pytest.raises(ConfigError) as err:
        parse_config(data, "host=localhost")
    assert err.value.key == key and str(err.value).startswith(key)


def test_password_is_stripped_from_urls_and_keyword_strings():
    assert "hunter2" not in strip_password("postgresql://u:hunter2@h:5432/d")
    assert "hunter2" not in strip_password("host=h user=u password=hunter2 dbname=d")


def test_unknown_keys_are_named_however_deep(tmp_path):
    path = tmp_path / "dbagent.yaml"
    path.write_text("alerts:\n  rules:\n    - {name: r, metric: connections, op: '>', threshold: 1, labels: {team: db},"
                    " for: 1m, sevrity: page}\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert err.value.key == "alerts.rules[0].sevrity" and "unknown key" in str(err.value)


async def test_a_reload_refuses_a_bad_file_and_keeps_listen_which_needs_a_restart(tmp_path, caplog):
    from stackyard.dbagent.main import DbAgent
    from stackyard.dbagent.storage import History

    path = tmp_path / "dbagent.yaml"
    path.write_text("listen: 127.0.0.1:9100\nintervals: {metrics: 1s}\n")
    agent = DbAgent(load_config(path), str(path), None, History(tmp_path / "h.sqlite"))
    agent.start()
    path.write_text("listen: 127.0.0.1:9100\nintervals: {metrics: 1s}\nalerts: {webhok_url: http://x}\n")
    agent.reload()
    assert "alerts.webhok_url" in caplog.text and agent.config.intervals["metrics"] == 1
    path.write_text("listen: 127.0.0.1:9200\nintervals: {metrics: 3s}\n")
    agent.reload()
    assert agent.config.intervals["metrics"] == 3, "the rest of the file applies"
    assert agent.config.listen == "127.0.0.1:9100" and "needs a restart" in caplog.text
    await agent.stop()


def test_the_shipped_configuration_passes_the_schema():
    from pathlib import Path

    import yaml

    configmap = yaml.safe_load((Path(__file__).parent.parent / "manifests" / "configmap.yaml").read_text())
    config = parse_config(yaml.safe_load(configmap["data"]["dbagent.yaml"]), "host=db")
    assert config.database == "/data/dbagent.sqlite" and config.intervals["metrics"] == 1
