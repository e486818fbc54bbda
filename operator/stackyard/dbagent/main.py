"""`stackyard dbagent`: runs the monitors, retention, alerts and /metrics; reloads on SIGHUP."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import aiohttp
from aiohttp import web
from prometheus_client import generate_latest

from .. import __version__
from ..httpserver import serving
from ..tasks import forever
from .alerts import Alerts
from .collectors import NAMES as COLLECTORS
from .config import ConfigError, DbAgentConfig, load_config
from .monitor import Exporter, InstanceMonitor
from .storage import History, InvalidStatus

log = logging.getLogger(__name__)
RETENTION_EVERY = 60.0
FLUSH_EVERY = 5.0  # seconds of history buffered in memory: one SQLite transaction per flush


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
        self.history.on_error = self.exporter.storage_errors_total.inc
        self.history.start(__version__, self.config.source_hash)
        self.alerts = Alerts(self.history, self.exporter)
        self._configure_alerts()
        self._sync_instances()

    def _configure_alerts(self) -> None:
        config, alerts = self.config, self.alerts
        alerts.rules, alerts.webhook_url, alerts.enabled = config.rules, config.webhook_url, config.alerts_enabled
        alerts.timeout, alerts.max_age, alerts.max_backoff = (config.webhook_timeout, config.alert_max_age,
                                                              config.alert_max_backoff)

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
            self.tasks[name] = [asyncio.create_task(monitor.run_collector(c, self._count(f"collector-{c}")),
                                                    name=f"{name}-{c}") for c in COLLECTORS]
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
        if new.listen != self.config.listen:
            log.warning("listen changed from %s to %s: that needs a restart; still listening on %s",
                        self.config.listen, new.listen, self.config.listen)
            new = replace(new, listen=self.config.listen)
        self.config = new
        self._configure_alerts()
        self._sync_instances()
        self.history.collected(config_hash=new.source_hash)
        log.info("configuration reloaded: %d instances, %d alert rules", len(new.instances), len(new.rules))

    def _count(self, task: str) -> Callable[[], None]:
        """What counts an unexpected error of one of the sidecar's loops."""
        return self.exporter.task_errors_total.labels(task).inc

    async def flush_forever(self) -> None:
        """Write the buffered history every FLUSH_EVERY seconds; no error ends it (`tasks.forever`)."""
        async def step() -> None:
            self.history.flush()

        await asyncio.sleep(FLUSH_EVERY)
        await forever("history flush", step, FLUSH_EVERY, log, self._count("flush"))

    def health(self) -> dict[str, object]:
        """What `/healthz` answers: each instance's status, and the history's storage."""
        storage = {"path": str(self.history.path), "ok": self.history.failure is None,
                   "error": self.history.failure, "dropped_rows": self.history.dropped_rows}
        return {"status": "ok" if self.history.failure is None else "degraded",
                "instances": {n: m.status for n, m in self.monitors.items()}, "storage": storage}

    async def retention_forever(self) -> None:
        """Prune the history every RETENTION_EVERY seconds; no error ends it (`tasks.forever`)."""
        async def step() -> None:
            removed = self.history.prune(self.config.retention)
            if any(removed.values()):
                log.info("retention removed %s", ", ".join(f"{n} {t}" for t, n in removed.items() if n))

        await forever("history retention", step, RETENTION_EVERY, log, self._count("retention"))

    async def deliveries_forever(self) -> None:
        """The alert deliveries; restarted with backoff should anything end them (`tasks.forever`)."""
        async def step() -> None:
            await self.alerts.deliver_forever()

        await forever("alert deliveries", step, 1.0, log, self._count("alerts"))

    async def stop(self) -> None:
        for name in list(self.monitors):
            for task in self.tasks.pop(name, []):
                task.cancel()
            await self.monitors.pop(name).close()
        self.history.stop()


def app(agent: DbAgent) -> web.Application:
    async def healthz(_: web.Request) -> web.Response:
        return web.json_response(agent.health())

    async def metrics(_: web.Request) -> web.Response:
        text = generate_latest(agent.exporter.registry).decode() + agent.exporter.postgres_text()
        return web.Response(body=text.encode(), headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})

    application = web.Application()
    application.router.add_get("/metrics", metrics)
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
        background = [asyncio.create_task(agent.retention_forever()), asyncio.create_task(agent.deliveries_forever()),
                      asyncio.create_task(agent.flush_forever())]
    try:
        async with serving(app(agent), config.listen):
            await stop.wait()
    finally:
        for task in background:
            task.cancel()
        await agent.stop()
        agent.history.close()
        log.info("dbagent stopped cleanly")


def running_health(listen: str) -> dict[str, object] | None:
    """The running sidecar's `/healthz`, or None when it does not answer."""
    host, port = listen.rsplit(":", 1)
    host = "127.0.0.1" if host in ("0.0.0.0", "", "*") else ("::1" if host == "::" else host.strip("[]"))

    async def fetch() -> dict[str, object] | None:
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3)) as session:
                async with session.get(f"http://{host}:{port}/healthz") as response:
                    return await response.json() if response.status == 200 else None
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return None

    return asyncio.run(fetch())


def check_status(config_path: str | None, max_age: float | None) -> tuple[bool, str]:
    """For `stackyard dbagent status`: (fresh and storing?, what to print)."""
    config = load_config(config_path, "postgresql://unused")
    health = running_health(config.listen)
    storage = health.get("storage") if health else None
    if isinstance(storage, dict) and not storage.get("ok"):
        return False, f"storage failing: {storage.get('error')} (collection goes on in memory for /metrics)"
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
