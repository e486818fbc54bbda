"""dbagent overhead: CPU and wall time per collection cycle per instance, RSS, and SQLite growth and disk
writes per day.

    python bench/dbagent.py [--cycles 200] [--simulated-minutes 120]

Runs every collector against a real (embedded) PostgreSQL `--cycles` times for
the CPU figures. Then it simulates `--simulated-minutes` of the sidecar at the
default intervals on a simulated clock (each collector when it is due, a flush
every 5 s as the sidecar does, light load of 3 statements per second, 40 statement shapes,
on the server) and scales the SQLite file growth and the bytes written to disk
(wchar of the process: the writes SQLite makes to the database and its WAL)
to a day. Target: at most 50 MB per day per instance.
When postgres_exporter is installed (Debian: prometheus-postgres-exporter), it
is scraped against the same server in the same run for comparison; otherwise
that line says it was not found. Target: less CPU per cycle than postgres_exporter per scrape.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import resource
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import psutil

from common import database, free_port, machine, progress

import psycopg

from stackyard.dbagent.alerts import Alerts  # noqa: E402
from stackyard.dbagent.collectors import DEFAULT_INTERVALS  # noqa: E402
from stackyard.dbagent.config import parse_config  # noqa: E402
from stackyard.dbagent.main import FLUSH_EVERY  # noqa: E402
from stackyard.dbagent.monitor import Exporter, InstanceMonitor  # noqa: E402
from stackyard.dbagent.storage import History  # noqa: E402

SECONDS_PER_DAY = 86400


async def measure(url: str, cycles: int, tmp: Path) -> dict[str, float]:
    config = parse_config({"instances": [{"name": "bench", "connection": url}], "database": str(tmp / "h.sqlite")})
    history = History(config.database)
    exporter = Exporter()
    monitor = InstanceMonitor(config.instances[0], config, history, exporter, Alerts(history, exporter))
    per_collector: dict[str, float] = {}
    await monitor.collect("metrics")
    cpu_before, wall_before = time.process_time(), time.perf_counter()
    for _ in range(cycles):
        for name in DEFAULT_INTERVALS:
            started = time.process_time()
            await monitor.collect(name)
            per_collector[name] = per_collector.get(name, 0.0) + time.process_time() - started
    cpu = time.process_time() - cpu_before
    wall = time.perf_counter() - wall_before
    await monitor.close()
    history.close()
    return {"cpu_ms_per_cycle": cpu / cycles * 1000, "wall_ms_per_cycle": wall / cycles * 1000,
            "per_collector": per_collector, "text": exporter.postgres_text()}


def _written_bytes() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    return 0


def _sqlite_bytes(tmp: Path) -> int:
    return sum(f.stat().st_size for f in tmp.glob("day.sqlite*"))


async def simulate_day(url: str, minutes: int, tmp: Path) -> dict[str, float]:
    """The sidecar's storage at default intervals on a simulated clock, scaled from `minutes` to a day."""
    config = parse_config({"instances": [{"name": "bench", "connection": url}], "database": str(tmp / "day.sqlite")})
    history = History(config.database)
    exporter = Exporter()
    clock = [time.time()]
    monitor = InstanceMonitor(config.instances[0], config, history, exporter, Alerts(history, exporter),
                              clock=lambda: clock[0])
    load = await psycopg.AsyncConnection.connect(url, autocommit=True)
    await load.execute("CREATE TABLE IF NOT EXISTS bench_load (id int PRIMARY KEY, n int)")
    await load.execute("INSERT INTO bench_load SELECT g, 0 FROM generate_series(1, 20) g ON CONFLICT DO NOTHING")
    await load.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
    for name in DEFAULT_INTERVALS:  # baselines (counters, deltas) before measuring
        await monitor.collect(name)
    history.flush()
    history.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    size_before, written_before = _sqlite_bytes(tmp), _written_bytes()
    seconds = minutes * 60
    for second in range(1, seconds + 1):
        clock[0] += 1.0
        shape = second % 20  # 20 statement shapes in turn, so query stats change as an application's do
        await load.execute(f"UPDATE bench_load SET n = n + {shape + 1} WHERE id = %s", (shape + 1,))
        await load.execute(f"SELECT n, {shape} AS shape FROM bench_load WHERE id = %s", (shape + 1,))
        await load.execute("SELECT count(*) FROM pg_class")
        for name, interval in DEFAULT_INTERVALS.items():
            if second % max(1, round(interval)) == 0:
                await monitor.collect(name)
        if second % round(FLUSH_EVERY) == 0:
            history.flush()
        if second % 300 == 0:
            progress(f"simulated {second // 60} of {minutes} minutes")
    history.flush()
    written = _written_bytes() - written_before
    history.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    growth = _sqlite_bytes(tmp) - size_before
    rows = {table: history.db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
            for table in ("activity_snapshots", "metrics_history", "query_stats", "replication_lag_history")}
    await monitor.close()
    await load.close()
    history.close()
    scale = SECONDS_PER_DAY / seconds
    return {"bytes_per_day": growth * scale, "written_per_day": written * scale,
            "rows_per_day": {t: n * scale for t, n in rows.items()}}


SHARED_FAMILIES = ("pg_up", "pg_stat_activity_count", "pg_locks_count", "pg_stat_database_xact_commit",
                   "pg_stat_database_numbackends", "pg_database_size_bytes")


def label_sets(text: str) -> dict[str, tuple[frozenset[str], str]]:
    """family -> (label names besides server/instance, TYPE) of a scrape, for the families both export."""
    types = dict(re.findall(r"^# TYPE (\w+) (\w+)$", text, re.M))
    found: dict[str, tuple[frozenset[str], str]] = {}
    for name, labels in re.findall(r"^(\w+)\{([^}]*)\}", text, re.M):
        if name in SHARED_FAMILIES:
            keys = frozenset(re.findall(r'(\w+)="', labels)) - {"server", "instance"}
            found[name] = (keys, types.get(name, "untyped"))
    return found


def compare_labels(ours: str, theirs: str) -> str:
    mine, exporter = label_sets(ours), label_sets(theirs)
    differ = [f"{name}: ours {sorted(mine.get(name, (set(), ''))[0])} {mine.get(name, ('', '-'))[1]},"
              f" exporter {sorted(exporter[name][0])} {exporter[name][1]}"
              for name in SHARED_FAMILIES if name in exporter and mine.get(name) != exporter[name]]
    compared = [n for n in SHARED_FAMILIES if n in exporter]
    return (f"labels and types as postgres_exporter's for {len(compared)} shared families" if not differ
            else "labels or types differ from postgres_exporter: " + "; ".join(differ))


def postgres_exporter(url: str, scrapes: int, ours: str) -> str:
    binary = shutil.which("prometheus-postgres-exporter") or shutil.which("postgres_exporter")
    if binary is None:
        return "postgres_exporter: not installed (apt-get install prometheus-postgres-exporter to compare)"
    port = free_port()
    env = {**os.environ, "DATA_SOURCE_NAME": url + "?sslmode=disable"}
    proc = subprocess.Popen([binary, f"--web.listen-address=127.0.0.1:{port}"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        text = ""
        for _ in range(50):
            try:
                text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
                break
            except OSError:
                time.sleep(0.2)
        process = psutil.Process(proc.pid)
        before = sum(process.cpu_times()[:2])
        for _ in range(scrapes):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read()
        after = sum(process.cpu_times()[:2])
        return (f"postgres_exporter: {(after - before) / scrapes * 1000:.2f} ms CPU per scrape ({scrapes} scrapes)\n"
                f"compatibility: {compare_labels(ours, text)}")
    finally:
        proc.terminate()
        proc.wait(timeout=10)


async def run(cycles: int, minutes: int) -> None:
    with database(shared_preload_libraries="pg_stat_statements") as url, tempfile.TemporaryDirectory() as tmp:
        progress(f"running {cycles} cycles of all collectors")
        result = await measure(url, cycles, Path(tmp))
        progress(f"simulating {minutes} minutes at the default intervals")
        day = await simulate_day(url, minutes, Path(tmp))
        exporter_line = postgres_exporter(url, 50, result["text"])
    print(f"machine: {machine()}")
    print(f"cycles: {cycles} (each: activity, queries, replication, locks, metrics on one instance)")
    print(f"CPU per cycle per instance: {result['cpu_ms_per_cycle']:.2f} ms")
    print(f"wall time per cycle per instance: {result['wall_ms_per_cycle']:.2f} ms")
    for name, seconds in result["per_collector"].items():
        print(f"  {name}: {seconds / cycles * 1000:.2f} ms CPU")
    print(f"peak RSS of the benchmark process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    print(f"SQLite growth per instance per day at default intervals, light load: {day['bytes_per_day'] / 1e6:.1f} MB"
          f" (target <= 50 MB; from {minutes} simulated minutes)")
    print(f"bytes written to disk per instance per day: {day['written_per_day'] / 1e6:.0f} MB")
    print("rows per day: " + ", ".join(f"{t} {n:,.0f}" for t, n in day["rows_per_day"].items()))
    print(exporter_line)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cycles", type=int, default=200)
    parser.add_argument("--simulated-minutes", type=int, default=120)
    arguments = parser.parse_args()
    asyncio.run(run(arguments.cycles, arguments.simulated_minutes))
