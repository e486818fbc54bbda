"""The sidecar under faults, on real servers: a full disk, unreachable instances, a blocked view, and the
exported series a postgres_exporter dashboard reads. SQLite's own limit (`PRAGMA max_page_count`) makes a
real SQLITE_FULL ("database or disk is full"), the error a full volume gives."""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import subprocess
import sys
import threading

import psycopg
import yaml

from stackyard.dbagent.main import DbAgent, app, check_status
from stackyard.dbagent.storage import History, StorageError
from stackyard.httpserver import serving
from stackyard.store.embedded import free_port

from .operator_harness import eventually
from .test_dbagent import make_monitors, servers  # noqa: F401  (module-scoped PostgreSQL servers)

FAST = {"activity": "100ms", "queries": "1s", "replication": "1s", "locks": "100ms", "metrics": "100ms"}


def _errors(exporter, server: str, collector: str) -> float:
    return exporter.registry.get_sample_value(
        "stackyard_dbagent_collection_errors_total", {"server": server, "collector": collector}) or 0.0


def _fill(history: History) -> None:
    (pages,) = history.db.execute("PRAGMA page_count").fetchone()
    history.db.execute(f"PRAGMA max_page_count = {pages}")


def _free(history: History) -> None:
    history.db.execute("PRAGMA max_page_count = 1073741823")


async def test_a_full_disk_is_reported_collection_goes_on_and_writes_resume(servers, tmp_path, caplog):  # noqa: F811
    config_path = tmp_path / "dbagent.yaml"
    port = free_port()
    config_path.write_text(yaml.safe_dump({
        "database": str(tmp_path / "h.sqlite"), "listen": f"127.0.0.1:{port}", "intervals": FAST,
        "instances": [{"name": "plain", "connection": servers["plain"].url()}]}))
    from stackyard.dbagent.config import load_config

    agent = DbAgent(load_config(config_path), str(config_path), None, History(tmp_path / "h.sqlite"))
    agent.start()
    history, exporter = agent.history, agent.exporter
    try:
        async with serving(app(agent), agent.config.listen):
            await eventually(lambda: _flushed_rows(history))
            _fill(history)

            async def failing():  # the pages' free space runs out after a few batches
                history.insert("lock_snapshots", "plain", [(1, [2], "ExclusiveLock", "t", 1.0, "x" * 300)] * 200)
                history.flush()
                return history.failure

            failure = await eventually(failing)
            assert str(tmp_path / "h.sqlite") in failure and "full" in failure
            for _ in range(5):
                history.flush()
            assert caplog.text.count("cannot write the history") == 1, "logged once per episode"
            assert exporter.registry.get_sample_value("stackyard_dbagent_storage_errors_total") >= 6
            health = agent.health()
            assert health["status"] == "degraded" and health["storage"]["ok"] is False
            fresh, message = await asyncio.to_thread(check_status, str(config_path), None)
            assert not fresh and message.startswith("storage failing") and str(tmp_path) in message

            # collection goes on in memory: /metrics keeps moving
            before = _commits(exporter)
            with psycopg.connect(servers["plain"].url(), autocommit=True) as conn:
                for _ in range(5):
                    conn.execute("SELECT 1")
            await eventually(lambda: _moved(exporter, before))
            assert agent.monitors["plain"].status == "connected"
            queued = len(history._pending)
            assert queued > 0

            _free(history)  # space returns: the next flush writes everything kept meanwhile
            await eventually(lambda: _recovered(history))
            assert "works again" in caplog.text
            assert agent.health()["storage"]["ok"] is True
    finally:
        await agent.stop()


async def _flushed_rows(history: History) -> bool:
    return len(history.rows("activity_snapshots")) > 0


async def _recovered(history: History) -> bool:
    written = history.flush()  # everything queued meanwhile goes in one transaction
    return written and history.failure is None and not history._pending


def _commits(exporter) -> float:
    samples = exporter.latest.get("plain", {}).get("metrics", {}).get("pg_stat_database_xact_commit", [])
    return sum(value for labels, value in samples if labels["datname"] == "postgres")


async def _moved(exporter, before: float) -> bool:
    return _commits(exporter) > before


def test_a_database_file_that_cannot_be_opened_names_its_path(tmp_path):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    path = blocker / "dbagent.sqlite"
    try:
        History(path)
    except StorageError as exc:
        assert str(path) in str(exc)
    else:
        raise AssertionError("opening a file under a regular file must fail")
    config = tmp_path / "dbagent.yaml"
    config.write_text(yaml.safe_dump({"database": str(path), "listen": f"127.0.0.1:{free_port()}",
                                      "instances": [{"name": "a", "connection": "host=127.0.0.1"}]}))
    proc = subprocess.run([sys.executable, "-m", "stackyard", "dbagent", "--config", str(config)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and str(path) in proc.stderr and "Traceback" not in proc.stderr


class SilentServer:
    """Accepts TCP connections and never answers: a PostgreSQL that hangs before the handshake."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(conn)

    def close(self) -> None:
        self.sock.close()
        for conn in self.held:
            conn.close()


async def test_unreachable_instances_keep_their_cause_log_once_and_count_only_attempts(tmp_path, caplog):
    caplog.set_level(logging.INFO, "stackyard.dbagent")
    silent = SilentServer()
    urls = {"closed": f"postgresql://postgres@127.0.0.1:{free_port()}/postgres",
            "silent": f"postgresql://postgres@127.0.0.1:{silent.port}/postgres"}
    history, exporter, _, monitors = make_monitors(tmp_path, urls, connect_timeout="2s")
    try:
        for _ in range(20):  # much faster than the reconnect backoff: most calls are retry waits
            await asyncio.gather(*(m.collect("metrics") for m in monitors.values()))
        rows = history.instances()
        assert "refused" in rows["closed"]["error_message"].lower()
        assert "timeout" in rows["silent"]["error_message"].lower()
        for name in urls:
            assert rows[name]["status"] == "unknown", "unknown -> disconnected is not an allowed transition"
            assert not rows[name]["error_message"].startswith("reconnecting")
            assert len(re.findall(rf"instance {name}\b", caplog.text)) == 1, "one log line per state change"
            assert 1 <= _errors(exporter, name, "metrics") <= 3, "retry waits are not collection errors"
            assert exporter.up[name] == 0.0
    finally:
        silent.close()
        for monitor in monitors.values():
            await monitor.close()


async def test_a_blocked_view_fails_only_its_collector(servers, tmp_path, caplog):  # noqa: F811
    """pg_stat_statements locked (as `ALTER EXTENSION ... UPDATE` does): the queries collector times out; the
    others keep their cadence on their own connections. (Locking pg_stat_activity itself, measured on
    PostgreSQL 17, stalls every session's catalog reads and new connections, so no collector could run.)"""
    url = servers["primary"].url()
    history, exporter, _, monitors = make_monitors(tmp_path, {"primary": url}, statement_timeout="300ms",
                                                   intervals={**FAST, "queries": "100ms"})
    monitor = monitors["primary"]
    for name in ("queries", "activity", "metrics"):
        assert await monitor.collect(name) is not None
    locker = await psycopg.AsyncConnection.connect(url)
    tasks = [asyncio.create_task(monitor.run_collector(name)) for name in ("queries", "activity", "metrics")]
    try:
        await locker.execute("LOCK TABLE pg_stat_statements IN ACCESS EXCLUSIVE MODE")
        await eventually(lambda: _failed_twice(exporter))
        cycles = _cycles(exporter, "metrics")
        await asyncio.sleep(1.5)  # a window of 5 statement timeouts: the metrics collector keeps its cadence
        assert _cycles(exporter, "metrics") - cycles >= 5
        assert monitor.status == "connected" and exporter.up["primary"] == 1.0
        assert "queries" not in exporter.latest["primary"], "a failing collector's series leave /metrics"
        assert "pg_stat_database_xact_commit" in exporter.latest["primary"]["metrics"]
        assert "pg_stat_activity_count" in exporter.latest["primary"]["activity"]
        assert caplog.text.count("collector queries failed") == 1, "logged once per episode"
        assert "statement timeout" in history.instances()["primary"]["error_message"]
        await locker.rollback()
        await eventually(lambda: _collected_again(monitor))
        assert history.instances()["primary"]["error_message"] is None
    finally:
        for task in tasks:
            task.cancel()
        await locker.close()
        await monitor.close()


def _cycles(exporter, collector: str) -> float:
    return exporter.registry.get_sample_value("stackyard_dbagent_collection_duration_seconds_count",
                                              {"collector": collector}) or 0.0


async def _failed_twice(exporter) -> bool:
    return _errors(exporter, "primary", "queries") >= 2


async def _collected_again(monitor) -> bool:
    return not monitor.failing and "queries" in monitor.exporter.latest["primary"]


async def test_metrics_read_like_postgres_exporter(servers, tmp_path):  # noqa: F811
    _, exporter, _, monitors = make_monitors(tmp_path, {"primary": servers["primary"].url()})
    monitor = monitors["primary"]
    try:
        for name in ("activity", "locks", "metrics", "replication"):
            assert await monitor.collect(name) is not None
        text = exporter.postgres_text()
    finally:
        await monitor.close()
    with psycopg.connect(servers["primary"].url()) as conn:
        databases = {name for (name,) in conn.execute("SELECT datname FROM pg_database")}
    assert 'instance="' not in text, "Prometheus sets `instance` itself; the monitored server is `server`"
    assert "# TYPE pg_stat_database_xact_commit counter" in text
    assert "# TYPE pg_locks_count gauge" in text
    samples = re.findall(r'^(\w+)\{([^}]*)\} (\S+)$', text, re.M)
    parsed = [(name, dict(re.findall(r'(\w+)="([^"]*)"', labels)), float(value)) for name, labels, value in samples]

    def series(family: str) -> list[dict[str, str]]:
        return [labels for name, labels, _ in parsed if name == family]

    assert {(s["datname"], s["mode"]) for s in series("pg_locks_count")} == {
        (d, m) for d in databases for m in ("accesssharelock", "rowsharelock", "rowexclusivelock",
                                            "shareupdateexclusivelock", "sharelock", "sharerowexclusivelock",
                                            "exclusivelock", "accessexclusivelock", "sireadlock")}
    assert {s["datname"] for s in series("pg_stat_activity_count")} == databases
    assert {s["state"] for s in series("pg_stat_activity_count")} >= {"active", "idle", "idle in transaction"}
    assert {s["datname"] for s in series("pg_stat_database_xact_commit")} == databases
    assert all(set(s) == {"server", "datid", "datname"} for s in series("pg_stat_database_blks_hit"))
    assert {s["datname"] for s in series("pg_database_size_bytes")} >= {"postgres", "template1"}
    assert all(s["server"] == "primary" for _, s, _ in parsed)
    assert series("pg_up") == [{"server": "primary"}]
