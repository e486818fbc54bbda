"""`stackyard agent`: wiring of the broker client, the Kubernetes client and the loop, plus /metrics and /healthz."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from ..httpserver import metrics_app, serving
from ..kube import Kube, load_configuration
from ..metrics import AgentMetrics
from ..tls import ReloadingContext, client_context
from .broker import BrokerClient
from .loop import AgentSettings, StackAgent

log = logging.getLogger(__name__)


def key_reader(path: Path):
    """Reads the PAK file on every call, so a rotated Secret mounted as a file takes effect without a restart."""

    def read() -> str:
        try:
            return path.read_text().strip()
        except OSError as exc:
            log.error("cannot read the agent key from %s: %s", path, exc)
            return ""

    return read


@dataclass(frozen=True)
class AgentTls:
    """The agent's TLS files: the CAs it trusts (None: the system's), its optional client certificate."""

    ca_file: str | None = None
    client_cert_file: str | None = None
    client_key_file: str | None = None

    def context(self) -> ReloadingContext | None:
        if not (self.ca_file or self.client_cert_file):
            return None  # aiohttp's default: the system's CAs, no client certificate
        return client_context(self.ca_file, self.client_cert_file, self.client_key_file)


async def run_agent(broker_url: str, pak_file: Path, settings: AgentSettings, metrics_address: str,
                    health_address: str, kubeconfig: str | None = None, tls: AgentTls | None = None) -> None:
    """Run until SIGTERM/SIGINT."""
    metrics = AgentMetrics()
    broker = BrokerClient(broker_url, key_reader(pak_file), tls=(tls or AgentTls()).context())
    kube = Kube(load_configuration(kubeconfig), user_agent="stackyard-agent")
    agent = StackAgent(broker, kube, settings, metrics)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)

    async def healthz(_: web.Request) -> web.Response:
        status = 200 if agent.ready.is_set() else 503
        return web.json_response({"status": "ok" if status == 200 else "starting"}, status=status)

    health = web.Application()
    health.router.add_get("/healthz", healthz)
    try:
        # Listen first: a port already taken fails the start at once, before anything is opened elsewhere.
        async with serving(metrics_app(metrics), metrics_address), serving(health, health_address):
            try:
                identity = await broker.identity()
                log.info("agent %s in cluster %s connected to %s", identity.name, identity.cluster_name, broker_url)
            except Exception as exc:  # keep going: the loop retries and reports
                log.warning("could not fetch the agent identity yet: %s", exc)
            task = asyncio.create_task(agent.run(), name="agent")
            await stop.wait()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    finally:  # whatever ended the agent, its HTTP session and its Kubernetes client are closed
        await broker.close()
        await kube.close()
