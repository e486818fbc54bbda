"""`stackyard dbagent`: runs the monitors, retention, alerts and /metrics; reloads on SIGHUP."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web
from prometheus_client.aiohttp import make_aiohttp_handler

from .. import __version__
from ..httpserver import serving
from .collectors import NAMES as COLLECTORS
from .config import ConfigError, DbAgentConfig, load_config
from .monitor import Alerts, Exporter, InstanceMonitor
from .storage import History, InvalidStatus

log = logging.getLogger(__name__)
RETENTION_EVERY = 60.0


@dataclass
class DbAgent:
    config: DbAgentConfig
    config_path: str | None
    default_connection: str | None
    history: History
    exporter: Exporter = field(default_factory=Exporter)
    monitors: dict[str, InstanceMonitor] = field(default_factory=dict)
    tasks: dict[str, list[asyncio.Task]] = field(default_factory=dict)
    alerts: Alerts = field(init=False)

    def start(self) -> None:
        self.history.start(__version__, self.config.source_hash)
        self.alerts = Alerts(self.history, self.exporter, self.config.rules, self.config.webhook_url,
                             self.config.alerts_enabled)
        self._sync_instances()

    def _sync_instances(self) -> None:
        wanted = {i.name: i for i in self.config.instances}
        for name in list(self.monitors):
            if name not in wanted or wanted[name] != self.monitors[name].instance:
                self._stop_instance(name)
        for name, instance in wanted.items():
            if name in self.monitors:
                self.monitors[name].config = self.config
                continue
            monitor = InstanceMonitor(instance, self.config, self.history, self.exporter, self.alerts)
            self.monitors[name] = monitor
            self.tasks[name] = [asyncio.create_task(monitor.run_collector(c), name=f"{name}-{c}") for c in COLLECTORS]
        self.history.remove_instances_except(wanted)

    def _stop_instance(self, name: str) -> None:
        for task in self.tasks.pop(name, []):
            task.cancel()
        monitor = self.monitors.pop(name)
        asyncio.create_task(monitor.close())
        self.exporter.forget(name)

    def reload(self) -> None:
        """SIGHUP: new intervals, rules and instances; data and alert state are kept."""
        try:
            new = load_config(self.config_path, self.default_connection)
        except ConfigError as exc:
            log.error("reload refused, keeping the running configuration: %s", exc)
            return
        self.config = new
        assert self.alerts is not None
        self.alerts.rules, self.alerts.webhook_url, self.alerts.enabled = new.rules, new.webhook_url, new.alerts_enabled
        self._sync_instances()
        self.history.collected(config_hash=new.source_hash)
        log.info("configuration reloaded: %d instances, %d alert rules", len(new.instances), len(new.rules))

    async def retention_forever(self) -> None:
        while True:
            removed = self.history.prune(self.config.retention)
            if any(removed.values()):
                log.info("retention removed %s", ", ".join(f"{n} {t}" for t, n in removed.items() if n))
            await asyncio.sleep(RETENTION_EVERY)

    async def stop(self) -> None:
        for name in list(self.monitors):
            for task in self.tasks.pop(name, []):
                task.cancel()
            await self.monitors.pop(name).close()
        self.history.stop()


def app(agent: DbAgent) -> web.Application:
    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "instances": {n: m.status for n, m in agent.monitors.items()}})

    application = web.Application()
    application.router.add_get("/metrics", make_aiohttp_handler(agent.exporter.registry))
    application.router.add_get("/healthz", healthz)
    return application


async def run_dbagent(config_path: str | None, default_connection: str | None) -> None:
    """Run until SIGTERM/SIGINT; SIGHUP reloads the configuration."""
    config = load_config(config_path, default_connection)
    if not config.enabled:
        log.info("dbagent is disabled in its configuration; idling")
    if not config.instances:
        raise ConfigError("instances", "no instance to monitor and no store database to default to")
    agent = DbAgent(config, config_path, default_connection, History(config.database))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, agent.reload)
    background: list[asyncio.Task] = []
    if config.enabled:
        agent.start()
        assert agent.alerts is not None
        background = [asyncio.create_task(agent.retention_forever()), asyncio.create_task(agent.alerts.deliver_forever())]
    try:
        async with serving(app(agent), config.listen):
            await stop.wait()
    finally:
        for task in background:
            task.cancel()
        await agent.stop()
        agent.history.close()
        log.info("dbagent stopped cleanly")


def check_status(config_path: str | None, max_age: float | None) -> tuple[bool, str]:
    """For `stackyard dbagent status`: (fresh?, what to print)."""
    config = load_config(config_path, "postgresql://unused")
    if not Path(config.database).exists():
        return False, f"no dbagent database at {config.database}"
    history = History(config.database)
    try:
        status = history.status()
    finally:
        history.close()
    if status is None:
        return False, "no agent_status row: the dbagent is not running"
    try:
        status.validate()
    except InvalidStatus as exc:
        return False, f"invalid agent_status: {exc}"
    limit = max_age if max_age is not None else 3 * max(config.intervals.values())
    age = time.time() - status.last_collect
    if age > limit:
        return False, f"stale: last collection {age:.1f}s ago (limit {limit:.1f}s), pid {status.pid}"
    return True, f"ok: last collection {age:.1f}s ago, pid {status.pid}, version {status.version}"
