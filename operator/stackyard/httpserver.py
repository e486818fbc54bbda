"""Small HTTP pieces every stackyard process shares: listen addresses, /metrics, /healthz, /readyz.

The agent and the sidecar use these without importing the operator, the API
or the store (checked by the import-linter contracts in pyproject.toml).
"""

from __future__ import annotations

import contextlib
import logging
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.aiohttp import make_aiohttp_handler

log = logging.getLogger(__name__)


class HasRegistry(Protocol):
    registry: CollectorRegistry


def split_address(address: str) -> tuple[str, int]:
    """`host:port` (or `[v6]:port`) into its parts; ValueError names the bad address."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ValueError(f"address {address!r} must look like HOST:PORT, for example 0.0.0.0:9090")
    return host.strip("[]"), int(port)


@dataclass
class Readiness:
    """Whether the operator in this process is watching its resources; served as /readyz next to /metrics."""

    ready: bool = False
    reason: str = "starting"


def metrics_app(metrics: HasRegistry, readiness: Readiness | None = None) -> web.Application:
    """/metrics in Prometheus text format, /healthz, and /readyz when a `readiness` is given."""

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        assert readiness is not None
        if readiness.ready:
            return web.json_response({"status": "ready"})
        return web.json_response({"status": "not ready", "reason": readiness.reason}, status=503)

    app = web.Application()
    app.router.add_get("/metrics", make_aiohttp_handler(metrics.registry))
    app.router.add_get("/healthz", healthz)
    if readiness is not None:
        app.router.add_get("/readyz", readyz)
    return app


@contextlib.asynccontextmanager
async def serving(app: web.Application, address: str, runner: web.AppRunner | None = None,
                  ssl_context: ssl.SSLContext | None = None) -> AsyncIterator[web.AppRunner]:
    """Serve `app` on `address` (with `runner` when given, over TLS with `ssl_context`) for the block."""
    host, port = split_address(address)
    runner = runner or web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port, ssl_context=ssl_context).start()
        log.info("listening on %s%s", address, " (TLS)" if ssl_context else "")
        yield runner
    finally:
        await runner.cleanup()
