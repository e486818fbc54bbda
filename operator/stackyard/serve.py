"""`stackyard run`: the operator, the agent API and /metrics in one process."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

from aiohttp import web

from .config import OperatorConfig
from .controller.operator import run_operator
from .metrics import Metrics
from .store import Store

log = logging.getLogger(__name__)


def split_address(address: str) -> tuple[str, int]:
    """`host:port` (or `[v6]:port`) into its parts; ValueError names the bad address."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ValueError(f"address {address!r} must look like HOST:PORT, for example 0.0.0.0:9090")
    return host.strip("[]"), int(port)


def metrics_app(metrics: Metrics) -> web.Application:
    """/metrics in Prometheus text format, and /healthz."""

    async def serve_metrics(_: web.Request) -> web.Response:
        return web.Response(body=metrics.exposition(), content_type="text/plain", charset="utf-8",
                            headers={"X-Content-Type-Options": "nosniff"})

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application()
    app.router.add_get("/metrics", serve_metrics)
    app.router.add_get("/healthz", healthz)
    return app


@contextlib.asynccontextmanager
async def serving(app: web.Application, address: str) -> AsyncIterator[web.AppRunner]:
    """Serve `app` on `address` for the duration of the block."""
    host, port = split_address(address)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        log.info("listening on %s", address)
        yield runner
    finally:
        await runner.cleanup()


async def retention_loop(store: Store, config: OperatorConfig, metrics: Metrics) -> None:
    """Hard-delete soft-deleted rows older than the retention age, on a schedule."""
    while True:
        try:
            purged = await store.purge_soft_deleted(config.retention_age)
            for table, count in purged.items():
                metrics.retention_purged_total.labels(table).inc(count)
            if any(purged.values()):
                log.info("retention purged %s", ", ".join(f"{n} {t}" for t, n in purged.items() if n))
        except Exception as exc:  # the loop must outlive a database outage
            log.error("retention purge failed, will retry next cycle: %s", exc)
        await asyncio.sleep(config.retention_interval)


@dataclass
class RunAddresses:
    metrics: str
    health: str


async def run_all(config: OperatorConfig, addresses: RunAddresses) -> None:
    """Run until Kopf stops (SIGTERM/SIGINT): the operator, the metrics server, retention."""
    metrics = Metrics()
    maintenance = await Store.open(config.database_url, min_size=1, max_size=2)
    retention = asyncio.create_task(retention_loop(maintenance, config, metrics), name="retention")
    try:
        async with serving(metrics_app(metrics), addresses.metrics):
            host, port = split_address(addresses.health)
            await run_operator(config, metrics, liveness_endpoint=f"http://{host}:{port}/healthz")
    finally:
        retention.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await retention
        await maintenance.close()
