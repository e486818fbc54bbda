"""Shared pieces of the benchmarks: a PostgreSQL, an emulated cluster, percentiles, progress."""

from __future__ import annotations

import contextlib
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any
from pathlib import Path

import psutil
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from stackyard.store import migrate  # noqa: E402
from stackyard.store.embedded import EmbeddedPostgres  # noqa: E402
from stackyard.store.location import ensure_database  # noqa: E402


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB, " \
           f"Python {platform.python_version()}"


@contextlib.contextmanager
def database(**settings: str) -> Iterator[str]:
    """A migrated database: STACKYARD_BENCH_DATABASE_URL, or a fresh embedded PostgreSQL (with extra `settings`)."""
    url = os.environ.get("STACKYARD_BENCH_DATABASE_URL")
    if url:
        migrate(url)
        yield url
        return
    with tempfile.TemporaryDirectory() as tmp:
        server = EmbeddedPostgres(Path(tmp) / "pg", settings={"fsync": "off", "max_connections": "200", **settings})
        server.start()
        try:
            ensure_database(server.url(), "stackyard")
            migrate(server.url("stackyard"))
            yield server.url("stackyard")
        finally:
            server.stop(mode="immediate")


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[index]


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def kubeconfig(path: Path, server: str) -> Path:
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "bench",
        "clusters": [{"name": "bench", "cluster": {"server": server}}],
        "users": [{"name": "bench", "user": {"token": "bench"}}],
        "contexts": [{"name": "bench", "context": {"cluster": "bench", "user": "bench"}}],
    }))
    return path


async def prepare_cluster(client, namespace: str) -> None:
    """Apply stackyard's CRDs and create the benchmark's namespace (both idempotent), as `make run` would."""
    for path in sorted((ROOT / "crds").glob("*.yaml")):
        await client.apply(yaml.safe_load(path.read_text()), "stackyard-bench")
    client.forget_discovery()
    await client.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}, "stackyard-bench")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stackyard_process(*args: str, env: dict[str, str]) -> subprocess.Popen:
    """`stackyard ARGS` as its own process; its log goes to a temporary file (`log_of(proc)`), never to a pipe
    nobody reads: a full pipe would block the process on its next log line and stall the measurement."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("STACKYARD_")}
    clean.update(env)
    profile = ["-m", "cProfile", "-o", os.environ["BENCH_PROFILE"]] if os.environ.get("BENCH_PROFILE") else []
    log = tempfile.TemporaryFile(mode="w+")
    proc = subprocess.Popen([sys.executable, *profile, "-m", "stackyard", *args], env=clean,
                            stdout=subprocess.DEVNULL, stderr=log, text=True)
    _LOGS[proc.pid] = log
    return proc


_LOGS: dict[int, Any] = {}


def log_of(proc: subprocess.Popen, tail: int = 2000) -> str:
    """The last `tail` characters a process started by `stackyard_process` logged."""
    log = _LOGS.get(proc.pid)
    if log is None:
        return ""
    log.seek(0)
    return log.read()[-tail:]


class PeakRss:
    """Samples a process's RSS (with children) in the background caller's loop."""

    def __init__(self, pid: int):
        self.process = psutil.Process(pid)
        self.peak = 0

    def sample(self) -> None:
        try:
            rss = self.process.memory_info().rss
        except psutil.Error:
            return
        self.peak = max(self.peak, rss)


async def wait_ready(http, url: str, seconds: float = 30.0) -> None:
    """Until `url` answers 200 or 304 (a server starting up), or RuntimeError after `seconds`."""
    import asyncio

    import aiohttp

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            async with http.get(url, ssl=False) as response:  # readiness only: a throwaway certificate is fine
                if response.status in (200, 304):
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {seconds:.0f}s")
