"""Per-instance monitoring, alert rules and the Prometheus view of the sidecar."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import psycopg
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from ..backoff import Backoff
from .collectors import REGISTRY, Previous, Reading
from .config import AlertRule, DbAgentConfig, Instance
from .storage import History

log = logging.getLogger(__name__)

ALLOWED_TRANSITIONS = {
    ("unknown", "connected"),
    ("connected", "disconnected"),
    ("disconnected", "connected"),
    ("connected", "error"),
    ("error", "connected"),
}


def transition(current: str, wanted: str) -> str:
    """The next instance status: only the documented transitions happen (README, "The database sidecar"); anything else keeps the current one."""
    return wanted if (current, wanted) in ALLOWED_TRANSITIONS else current


class Exporter(Collector):
    """postgres_exporter-style gauges from the latest reading of every instance, plus the sidecar's own metrics."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        self.up: dict[str, float] = {}
        self.latest: dict[str, dict[str, list[tuple[dict[str, str], float]]]] = {}
        self.collection_seconds = Histogram(
            "stackyard_dbagent_collection_duration_seconds", "Duration of one collection, by collector.",
            ["collector"], buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5), registry=self.registry,
        )
        self.errors_total = Counter(
            "stackyard_dbagent_collection_errors", "Failed collections by instance and collector.",
            ["instance", "collector"], registry=self.registry,
        )
        self.webhook_failures_total = Counter(
            "stackyard_dbagent_webhook_failures", "Alert webhook deliveries that failed after all retries.",
            registry=self.registry,
        )
        self.registry.register(self)

    def forget(self, instance: str) -> None:
        self.up.pop(instance, None)
        self.latest.pop(instance, None)

    def update(self, instance: str, reading: Reading) -> None:
        self.latest.setdefault(instance, {}).update(reading.labelled)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        up = GaugeMetricFamily("pg_up", "Whether the last connection to the instance worked.", labels=["instance"])
        for instance, value in sorted(self.up.items()):
            up.add_metric([instance], value)
        yield up
        families: dict[str, GaugeMetricFamily] = {}
        for instance, metrics in sorted(self.latest.items()):
            for name, samples in sorted(metrics.items()):
                for labels, value in samples:
                    keys = ["instance", *sorted(labels)]
                    family = families.setdefault(name, GaugeMetricFamily(name, f"{name} (PostgreSQL)", labels=keys))
                    family.add_metric([instance, *[labels[k] for k in sorted(labels)]], value)
        yield from families.values()


@dataclass
class Alerts:
    """Threshold rules per instance; triggered and resolved rows, and webhook deliveries that never block collection."""

    history: History
    exporter: Exporter
    rules: tuple[AlertRule, ...] = ()
    webhook_url: str | None = None
    enabled: bool = True
    pending: dict[tuple[str, str], float] = field(default_factory=dict)
    firing: set[tuple[str, str]] = field(default_factory=set)
    queue: asyncio.Queue = field(default_factory=lambda: asyncio.Queue(maxsize=1000))
    attempts: int = 6
    first_delay: float = 0.5

    def evaluate(self, instance: str, values: dict[str, float], now: float | None = None) -> None:
        if not self.enabled:
            return
        now = time.time() if now is None else now
        for rule in self.rules:
            if rule.metric not in values:
                continue
            key, value = (instance, rule.name), values[rule.metric]
            if rule.breached(value):
                since = self.pending.setdefault(key, now)
                if key not in self.firing and now - since >= rule.for_seconds:
                    self.firing.add(key)
                    self._record(instance, rule, "triggered", value, now)
            else:
                self.pending.pop(key, None)
                if key in self.firing:
                    self.firing.discard(key)
                    self._record(instance, rule, "resolved", value, now)

    def _record(self, instance: str, rule: AlertRule, state: str, value: float, now: float) -> None:
        message = f"{rule.metric} {rule.op} {rule.threshold:g} on {instance}: value {value:g} ({state})"
        log.warning("alert %s %s: %s", rule.name, state, message)
        self.history.insert("alert_events", instance, [(rule.name, rule.metric, state, value, rule.threshold, message)], now)
        if self.webhook_url:
            payload = {"rule": rule.name, "instance": instance, "metric": rule.metric, "state": state, "value": value,
                       "threshold": rule.threshold, "op": rule.op, "message": message, "at": now}
            if self.queue.full():
                self.queue.get_nowait()  # drop the oldest rather than block collection
            self.queue.put_nowait(payload)

    async def deliver_forever(self) -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
            while True:
                payload = await self.queue.get()
                await self._deliver(session, payload)

    async def _deliver(self, session: aiohttp.ClientSession, payload: dict[str, Any]) -> None:
        backoff = Backoff(self.first_delay, 30.0)
        for attempt in range(1, self.attempts + 1):
            try:
                assert self.webhook_url is not None  # only queued when a webhook is configured
                async with session.post(self.webhook_url, json=payload) as response:
                    if response.status < 300:
                        return
                    problem = f"HTTP {response.status}"
            except (aiohttp.ClientError, TimeoutError) as exc:
                problem = str(exc) or type(exc).__name__
            if attempt < self.attempts:
                delay = backoff.next_delay()
                log.info("alert webhook attempt %d failed (%s); retrying in %.1fs", attempt, problem, delay)
                await asyncio.sleep(delay)
        self.exporter.webhook_failures_total.inc()
        log.error("alert webhook %s failed %d times; dropped alert %s", self.webhook_url, self.attempts, payload["rule"])


@dataclass
class InstanceMonitor:
    """One PostgreSQL instance: its own connection, status, backoff and collectors."""

    instance: Instance
    config: DbAgentConfig
    history: History
    exporter: Exporter
    alerts: Alerts
    status: str = "unknown"
    conn: psycopg.AsyncConnection | None = None
    previous: Previous = field(default_factory=Previous)
    notes: dict[str, str] = field(default_factory=dict)
    retry_at: float = 0.0
    reconnect: Backoff = field(default_factory=lambda: Backoff(0.5, 30.0))
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def __post_init__(self) -> None:
        self._record(None)

    def _record(self, error: str | None, seen: float | None = None) -> None:
        message = error or ("; ".join(self.notes.values()) or None)
        self.history.set_instance(self.instance.name, self.instance.safe_connection, self.status, seen, message)

    def _move(self, wanted: str, error: str | None, seen: float | None = None) -> None:
        before = self.status
        self.status = transition(self.status, wanted)
        if before != self.status:
            log.info("instance %s: %s -> %s%s", self.instance.name, before, self.status, f" ({error})" if error else "")
        self._record(error, seen)
        self.exporter.up[self.instance.name] = 0.0 if wanted == "disconnected" else 1.0

    async def _connection(self) -> psycopg.AsyncConnection:
        if self.conn is not None and not self.conn.closed:
            return self.conn
        if time.monotonic() < self.retry_at:
            raise psycopg.OperationalError(f"reconnecting in {self.retry_at - time.monotonic():.1f}s")
        timeout_ms = int(self.config.statement_timeout * 1000)
        try:
            self.conn = await psycopg.AsyncConnection.connect(
                self.instance.connection, autocommit=True,
                connect_timeout=max(2, math.ceil(self.config.statement_timeout)),
                options=f"-c statement_timeout={timeout_ms} -c lock_timeout={timeout_ms}",
                application_name="stackyard-dbagent",
            )
        except psycopg.OperationalError:
            self.retry_at = time.monotonic() + self.reconnect.next_delay()
            raise
        self.reconnect.reset()
        return self.conn

    async def collect(self, name: str) -> Reading | None:
        """Run one collector now; never raises (failures become the instance's status)."""
        started = time.monotonic()
        async with self.lock:
            try:
                conn = await self._connection()
                reading = await REGISTRY[name].collect(conn, self.previous, self.config.top_queries)
            except psycopg.OperationalError as exc:
                await self._drop_connection()
                self.exporter.errors_total.labels(self.instance.name, name).inc()
                self._move("disconnected", _first_line(exc))
                return None
            except psycopg.Error as exc:
                self.exporter.errors_total.labels(self.instance.name, name).inc()
                self._move("error", f"{name}: {_first_line(exc)}")
                return None
            finally:
                self.exporter.collection_seconds.labels(name).observe(time.monotonic() - started)
        if reading.note:
            self.notes[name] = reading.note
        else:
            self.notes.pop(name, None)
        now = time.time()
        for table, rows in reading.rows.items():
            self.history.insert(table, self.instance.name, rows, now)
        self.exporter.update(self.instance.name, reading)
        self._move("connected", None, now)
        self.history.collected()
        self.alerts.evaluate(self.instance.name, reading.values, now)
        return reading

    async def _drop_connection(self) -> None:
        if self.conn is not None:
            try:
                await self.conn.close()
            except Exception:  # already broken; nothing to save
                pass
        self.conn = None

    async def run_collector(self, name: str) -> None:
        while True:
            await self.collect(name)
            await asyncio.sleep(self.config.intervals[name])

    async def close(self) -> None:
        await self._drop_connection()


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:500]
