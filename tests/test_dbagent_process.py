"""`stackyard dbagent` as a real process: /metrics, SIGHUP reload, clean shutdown, and the status command."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import aiohttp
import yaml
from prometheus_client.parser import text_string_to_metric_families

from stackyard.dbagent.storage import History
from stackyard.store.embedded import free_port

from .operator_harness import eventually
from .test_dbagent import servers  # noqa: F401  (module-scoped PostgreSQL servers)


def stackyard(*args: str, **kwargs) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STACKYARD_")}
    return subprocess.Popen([sys.executable, "-m", "stackyard", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)


def status_command(config) -> tuple[int, str]:
    proc = stackyard("dbagent", "status", "--config", str(config))
    out, err = proc.communicate(timeout=60)
    return proc.returncode, out + err


def write_config(path, sqlite, port, instances, interval="200ms"):
    path.write_text(yaml.safe_dump({
        "database": str(sqlite), "listen": f"127.0.0.1:{port}",
        "intervals": {"activity": interval, "queries": "1s", "replication": "1s", "locks": "1s", "metrics": interval},
        "instances": [{"name": n, "connection": u} for n, u in instances.items()],
    }))


async def fetch_metrics(port: int) -> str | None:
    try:
        async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}/metrics") as response:
            return await response.text() if response.status == 200 else None
    except aiohttp.ClientError:
        return None


async def test_dbagent_process_metrics_reload_shutdown_and_status(servers, tmp_path):  # noqa: F811
    sqlite, config, port = tmp_path / "dbagent.sqlite", tmp_path / "dbagent.yaml", free_port()
    instances = {"primary": servers["primary"].url(), "plain": servers["plain"].url()}
    write_config(config, sqlite, port, instances)
    code, output = status_command(config)
    assert code == 1 and "no dbagent database" in output

    proc = stackyard("dbagent", "--config", str(config))
    try:
        expected = {"pg_stat_activity_count", "pg_locks_count", "pg_stat_database_xact_commit",
                    "stackyard_dbagent_collection_duration_seconds"}

        async def both_up_and_collected():
            # pg_up turns 1 on connecting; each collector's series appear after its first cycle (locks: 1 s)
            text = await fetch_metrics(port)
            if not text:
                return None
            families = list(text_string_to_metric_families(text))
            ups = {s.labels["server"]: s.value for f in families if f.name == "pg_up" for s in f.samples}
            names = {f.name for f in families}
            return text if ups == {"primary": 1.0, "plain": 1.0} and expected <= names else None

        await eventually(both_up_and_collected, timeout=30)
        code, output = status_command(config)
        assert code == 0 and output.startswith("ok")

        before = History(sqlite).status().config_hash
        write_config(config, sqlite, port, {"plain": servers["plain"].url()})
        proc.send_signal(signal.SIGHUP)

        async def reloaded():
            history = History(sqlite)
            status, known = history.status(), history.instances()
            history.close()
            return status.config_hash != before and set(known) == {"plain"}

        await eventually(reloaded)
        assert proc.poll() is None
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err[-2000:]
    assert History(sqlite).status() is None, "clean shutdown deletes agent_status"

    code, output = status_command(config)
    assert code == 1 and "not running" in output
    history = History(sqlite)
    history.start("0.1.0", "x")
    history.db.execute("UPDATE agent_status SET start_time = ?, last_collect = ?", (time.time() - 600, time.time() - 600))
    history.close()
    code, output = status_command(config)
    assert code == 1 and "stale" in output


def test_a_bad_config_names_the_key(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("intervals: {activity: soon}\n")
    proc = stackyard("dbagent", "--config", str(config))
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1 and "intervals.activity" in err and "Traceback" not in err
