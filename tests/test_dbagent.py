"""The database sidecar against real PostgreSQL servers: a primary with a streaming replica, and a plain one."""

from __future__ import annotations

import asyncio
import sqlite3
import time

import psycopg
import pytest

from stackyard.dbagent.config import parse_config
from stackyard.dbagent.alerts import Alerts
from stackyard.dbagent.monitor import Exporter, InstanceMonitor, transition
from stackyard.dbagent.storage import SCHEMA_VERSION, History
from stackyard.store.embedded import EmbeddedPostgres

from .operator_harness import eventually

PRIMARY_SETTINGS = {"fsync": "off", "shared_preload_libraries": "pg_stat_statements", "deadlock_timeout": "100ms"}


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    base = tmp_path_factory.mktemp("dbagent-pg")
    primary = EmbeddedPostgres(base / "primary", settings=PRIMARY_SETTINGS)
    primary.start()
    with psycopg.connect(primary.url(), autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        conn.execute("CREATE TABLE IF NOT EXISTS accounts (id int PRIMARY KEY, balance int)")
        conn.execute("INSERT INTO accounts VALUES (1, 100), (2, 100) ON CONFLICT DO NOTHING")
    plain = EmbeddedPostgres(base / "plain", settings={"fsync": "off"})
    plain.start()
    replica = EmbeddedPostgres(base / "replica", settings={"fsync": "off"})
    replica.init_standby(primary)
    replica.start()
    try:
        yield {"primary": primary, "plain": plain, "replica": replica}
    finally:
        for server in (replica, plain, primary):
            server.stop(mode="immediate")


def make_monitors(tmp_path, urls: dict[str, str], **config) -> tuple[History, Exporter, Alerts, dict[str, InstanceMonitor]]:
    cfg = parse_config({"instances": [{"name": n, "connection": u} for n, u in urls.items()],
                        "database": str(tmp_path / "dbagent.sqlite"), **config})
    history = History(cfg.database)
    exporter = Exporter()
    alerts = Alerts(history, exporter, cfg.rules, cfg.webhook_url, cfg.alerts_enabled, first_delay=0.05)
    monitors = {i.name: InstanceMonitor(i, cfg, history, exporter, alerts) for i in cfg.instances}
    return history, exporter, alerts, monitors


def test_status_moves_only_along_the_allowed_transitions():
    assert transition("unknown", "connected") == "connected"
    assert transition("unknown", "disconnected") == "unknown"
    assert transition("unknown", "error") == "unknown"
    assert transition("connected", "disconnected") == "disconnected"
    assert transition("disconnected", "connected") == "connected"
    assert transition("disconnected", "error") == "disconnected"
    assert transition("connected", "error") == "error"
    assert transition("error", "connected") == "connected"
    assert transition("error", "disconnected") == "error"


async def test_replication_lag_on_the_primary_and_on_the_standby(servers, tmp_path):
    history, _, _, monitors = make_monitors(
        tmp_path, {"primary": servers["primary"].url(), "replica": servers["replica"].url()})

    async def primary_sees_replica():
        await monitors["primary"].collect("replication")
        return [r for r in history.rows("replication_lag_history", "primary") if r["role"] == "primary"]

    rows = await eventually(primary_sees_replica, timeout=20)
    assert rows[0]["replica"] and rows[0]["lag_seconds"] >= 0 and rows[0]["lag_bytes"] >= 0
    await monitors["replica"].collect("replication")
    (standby,) = history.rows("replication_lag_history", "replica")
    assert standby["role"] == "standby" and standby["lag_seconds"] >= 0
    assert history.instances()["replica"]["status"] == "connected"
    for monitor in monitors.values():
        await monitor.close()


async def test_a_real_lock_wait_records_blocked_and_blocking_pid(servers, tmp_path):
    url = servers["primary"].url()
    history, exporter, _, monitors = make_monitors(tmp_path, {"primary": url})
    blocker = await psycopg.AsyncConnection.connect(url)
    waiter = await psycopg.AsyncConnection.connect(url, autocommit=True)
    try:
        await blocker.execute("LOCK TABLE accounts IN ACCESS EXCLUSIVE MODE")
        blocker_pid = blocker.info.backend_pid
        waiter_pid = waiter.info.backend_pid
        blocked = asyncio.create_task(waiter.execute("SELECT * FROM accounts"))

        async def recorded():
            await monitors["primary"].collect("locks")
            return [r for r in history.rows("lock_snapshots") if r["pid"] == waiter_pid]

        (row,) = (await eventually(recorded))[:1]
        assert str(blocker_pid) in row["blocking_pids"]
        assert row["mode"] == "AccessShareLock" and "accounts" in row["relation"]
        assert "pg_locks_count" in exporter.latest["primary"]["locks"]
        await blocker.rollback()
        await blocked
    finally:
        await blocker.close()
        await waiter.close()
        await monitors["primary"].close()


async def test_a_real_deadlock_is_recorded(servers, tmp_path):
    url = servers["primary"].url()
    history, _, _, monitors = make_monitors(tmp_path, {"primary": url})
    await monitors["primary"].collect("metrics")  # the counter's baseline
    one = await psycopg.AsyncConnection.connect(url)
    two = await psycopg.AsyncConnection.connect(url)
    try:
        await one.execute("UPDATE accounts SET balance = balance - 1 WHERE id = 1")
        await two.execute("UPDATE accounts SET balance = balance - 1 WHERE id = 2")
        results = await asyncio.gather(
            one.execute("UPDATE accounts SET balance = balance + 1 WHERE id = 2"),
            two.execute("UPDATE accounts SET balance = balance + 1 WHERE id = 1"),
            return_exceptions=True,
        )
        assert any(isinstance(r, psycopg.errors.DeadlockDetected) for r in results)
        for conn in (one, two):
            await conn.rollback()
            await conn.execute("SELECT pg_stat_force_next_flush()")
    finally:
        await one.close()
        await two.close()

    async def recorded():
        await monitors["primary"].collect("metrics")
        return history.rows("deadlock_events", "primary")

    (event,) = await eventually(recorded, timeout=15)
    assert event["count"] >= 1 and event["database"] == "postgres"
    await monitors["primary"].close()


async def test_query_stats_when_installed_and_a_skip_reason_when_not(servers, tmp_path):
    history, _, _, monitors = make_monitors(
        tmp_path, {"primary": servers["primary"].url(), "plain": servers["plain"].url()}, top_queries=5)
    await monitors["primary"].collect("queries")
    with psycopg.connect(servers["primary"].url(), autocommit=True) as conn:
        for _ in range(20):
            conn.execute("SELECT count(*) FROM accounts WHERE balance > %s", (0,))
    await monitors["primary"].collect("queries")
    rows = history.rows("query_stats", "primary")
    assert 0 < len(rows) <= 5
    (first,) = [r for r in rows if r["query"] and "accounts" in r["query"] and r["calls"] >= 20]
    with psycopg.connect(servers["primary"].url(), autocommit=True) as conn:
        for _ in range(20):
            conn.execute("SELECT count(*) FROM accounts WHERE balance > %s", (0,))
    await monitors["primary"].collect("queries")
    again = [r for r in history.rows("query_stats", "primary") if r["queryid"] == first["queryid"]]
    assert [r["query"] is None for r in again] == [False, True], "the text is stored once, not on every row"

    await monitors["plain"].collect("queries")
    plain = history.instances()["plain"]
    assert plain["status"] == "connected"
    assert "pg_stat_statements" in plain["error_message"] and "skipped" in plain["error_message"]
    assert history.rows("query_stats", "plain") == []
    for monitor in monitors.values():
        await monitor.close()


async def test_a_stopped_instance_goes_disconnected_and_back_while_the_other_keeps_collecting(servers, tmp_path):
    victim = EmbeddedPostgres(tmp_path / "victim", settings={"fsync": "off"})
    victim.start()
    try:
        history, exporter, _, monitors = make_monitors(
            tmp_path, {"victim": victim.url(), "plain": servers["plain"].url()},
            intervals={"activity": "100ms", "queries": "1s", "replication": "1s", "locks": "1s", "metrics": "100ms"},
            statement_timeout="1s")
        tasks = [asyncio.create_task(m.run_collector(c)) for m in monitors.values() for c in ("activity", "metrics")]
        try:
            await eventually(lambda: _status(history, "victim", "connected"))
            victim.stop()
            await eventually(lambda: _status(history, "victim", "disconnected"))
            assert exporter.up["victim"] == 0.0
            assert "victim" not in exporter.latest, "only pg_up stays for a server that is down"
            assert 'server="victim"} 0' in exporter.postgres_text()
            during = len(history.rows("metrics_history", "plain"))
            await eventually(lambda: _more_rows(history, "plain", during + 10))
            cause = history.instances()["victim"]["error_message"]
            assert cause and not cause.startswith("reconnecting"), "retry waits keep the real cause"
            victim.start()
            await eventually(lambda: _status(history, "victim", "connected"), timeout=40)
            assert exporter.up["victim"] == 1.0
            assert history.instances()["victim"]["error_message"] is None
        finally:
            for task in tasks:
                task.cancel()
            for monitor in monitors.values():
                await monitor.close()
    finally:
        victim.stop(mode="immediate")


async def _status(history: History, name: str, expected: str) -> bool:
    return history.instances()[name]["status"] == expected


async def _more_rows(history: History, name: str, at_least: int) -> bool:
    return len(history.rows("metrics_history", name)) >= at_least


async def test_a_failing_query_is_error_then_connected(servers, tmp_path):
    admin_url = servers["plain"].url()
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute("DROP ROLE IF EXISTS watcher")
        conn.execute("CREATE ROLE watcher LOGIN IN ROLE pg_monitor")
        conn.execute("REVOKE EXECUTE ON FUNCTION pg_blocking_pids(integer) FROM PUBLIC")
    watcher_url = admin_url.replace("postgres@", "watcher@", 1)
    history, _, _, monitors = make_monitors(tmp_path, {"plain": watcher_url})
    try:
        await monitors["plain"].collect("metrics")
        assert history.instances()["plain"]["status"] == "connected"
        await monitors["plain"].collect("locks")
        row = history.instances()["plain"]
        assert row["status"] == "error" and "permission denied" in row["error_message"]
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute("GRANT EXECUTE ON FUNCTION pg_blocking_pids(integer) TO PUBLIC")
        await monitors["plain"].collect("locks")
        assert history.instances()["plain"]["status"] == "connected"
    finally:
        await monitors["plain"].close()


def test_retention_removes_only_rows_past_their_age(tmp_path):
    history = History(tmp_path / "h.sqlite")
    now = time.time()
    history.insert("metrics_history", "a", [("connections", 1.0)], now - 2 * 86400)
    history.insert("metrics_history", "a", [("connections", 2.0)], now - 3600)
    history.insert("query_stats", "a", [("1", "select", 1, 1.0, 1.0, 1)], now - 2 * 86400)
    retention = parse_config({}, "host=x").retention
    removed = history.prune(retention, batch=1, now=now)
    assert removed["metrics_history"] == 1 and removed["query_stats"] == 0  # queries keep 7 days
    assert [r["value"] for r in history.rows("metrics_history")] == [2.0]
    assert len(history.rows("query_stats")) == 1


def test_an_older_file_without_instance_name_is_migrated(tmp_path):
    path = tmp_path / "old.sqlite"
    old = sqlite3.connect(path)
    old.execute("CREATE TABLE metrics_history (id INTEGER PRIMARY KEY AUTOINCREMENT, timestamp REAL NOT NULL,"
                " metric TEXT, value REAL)")
    old.execute("INSERT INTO metrics_history (timestamp, metric, value) VALUES (1.0, 'connections', 3)")
    old.execute("PRAGMA user_version = 1")
    old.commit()
    old.close()
    history = History(path)
    assert history.version() == SCHEMA_VERSION
    (row,) = history.rows("metrics_history")
    assert row["instance_name"] == "default" and row["value"] == 3
    indexes = {r[1] for r in history.db.execute("PRAGMA index_list(metrics_history)")}
    assert "metrics_history_instance_time" in indexes
