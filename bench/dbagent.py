"""dbagent overhead: CPU and wall time per collection cycle per instance, RSS, SQLite bytes per simulated day.

    python bench/dbagent.py [--cycles 200]

Runs every collector against a real (embedded) PostgreSQL `--cycles` times.
When postgres_exporter is installed (Debian: prometheus-postgres-exporter), it
is scraped against the same server in the same run for comparison; otherwise
that line says it was not found. Target: less CPU per cycle than postgres_exporter per scrape.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import psutil

from common import database, free_port, machine, progress

from stackyard.dbagent.collectors import DEFAULT_INTERVALS  # noqa: E402
from stackyard.dbagent.config import parse_config  # noqa: E402
from stackyard.dbagent.alerts import Alerts  # noqa: E402
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
    size_before = sum(f.stat().st_size for f in tmp.glob("h.sqlite*"))
    cpu_before, wall_before = time.process_time(), time.perf_counter()
    for _ in range(cycles):
        for name in DEFAULT_INTERVALS:
            started = time.process_time()
            await monitor.collect(name)
            per_collector[name] = per_collector.get(name, 0.0) + time.process_time() - started
    cpu = time.process_time() - cpu_before
    wall = time.perf_counter() - wall_before
    history.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    size_after = sum(f.stat().st_size for f in tmp.glob("h.sqlite*"))
    await monitor.close()
    growth = max(0, size_after - size_before) / cycles
    # rows per day at default intervals: each collector runs 86400/interval times a day
    cycles_per_day = sum(SECONDS_PER_DAY / interval for interval in DEFAULT_INTERVALS.values()) / len(DEFAULT_INTERVALS)
    return {"cpu_ms_per_cycle": cpu / cycles * 1000, "wall_ms_per_cycle": wall / cycles * 1000,
            "sqlite_bytes_per_day": growth * cycles_per_day, "per_collector": per_collector,
            "bytes_per_cycle": growth}


def postgres_exporter(url: str, scrapes: int) -> str:
    binary = shutil.which("prometheus-postgres-exporter") or shutil.which("postgres_exporter")
    if binary is None:
        return "postgres_exporter: not installed (apt-get install prometheus-postgres-exporter to compare)"
    port = free_port()
    env = {**os.environ, "DATA_SOURCE_NAME": url + "?sslmode=disable"}
    proc = subprocess.Popen([binary, f"--web.listen-address=127.0.0.1:{port}"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(50):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
                break
            except OSError:
                time.sleep(0.2)
        process = psutil.Process(proc.pid)
        before = sum(process.cpu_times()[:2])
        for _ in range(scrapes):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read()
        after = sum(process.cpu_times()[:2])
        return f"postgres_exporter: {(after - before) / scrapes * 1000:.2f} ms CPU per scrape ({scrapes} scrapes)"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


async def run(cycles: int) -> None:
    with database() as url, tempfile.TemporaryDirectory() as tmp:
        progress(f"running {cycles} cycles of all collectors")
        result = await measure(url, cycles, Path(tmp))
        exporter_line = postgres_exporter(url, 50)
    print(f"machine: {machine()}")
    print(f"cycles: {cycles} (each: activity, queries, replication, locks, metrics on one instance)")
    print(f"CPU per cycle per instance: {result['cpu_ms_per_cycle']:.2f} ms")
    print(f"wall time per cycle per instance: {result['wall_ms_per_cycle']:.2f} ms")
    for name, seconds in result["per_collector"].items():
        print(f"  {name}: {seconds / cycles * 1000:.2f} ms CPU")
    print(f"peak RSS of the benchmark process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    print(f"SQLite growth: {result['bytes_per_cycle']:.0f} bytes per cycle, "
          f"~{result['sqlite_bytes_per_day'] / 2**20:.0f} MiB per simulated day at default intervals")
    print(exporter_line)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cycles", type=int, default=200)
    asyncio.run(run(parser.parse_args().cycles))
