"""Per-instance monitoring and the sidecar's Prometheus view.

Each collector of an instance has its own connection, so one blocked view
(a statement timeout) fails that collector only; losing the server fails them
all. Status moves only along the documented transitions (README, "The database
sidecar"), each change logged once; the cause of a failure is kept, never
replaced by a retry notice.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import psycopg
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from ..backoff import Backoff
from ..metrics import task_errors
from ..tasks import forever
from . import exposition
from .alerts import Alerts
from .collectors import REGISTRY, Previous, Reading
from .config import DbAgentConfig, Instance
from .storage import History

log = logging.getLogger(__name__)

ALLOWED_TRANSITIONS = {
    ("unknown", "connected"),
    ("connected", "disconnected"),
    ("disconnected", "connected"),
    ("connected", "error"),
    ("error", "connected"),
}
# A statement or lock timeout: the server answers, one view is blocked. Fails only the collector that hit it.
TIMEOUTS = (psycopg.errors.QueryCanceled, psycopg.errors.LockNotAvailable)


def transition(current: str, wanted: str) -> str:
    """The next instance status: only the documented transitions happen; anything else keeps the current one."""
    return wanted if (current, wanted) in ALLOWED_TRANSITIONS else current


class Exporter:
    """The latest reading of every instance and collector, and the sidecar's own metrics."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        self.up: dict[str, float] = {}
        self.latest: dict[str, dict[str, dict[str, exposition.Samples]]] = {}  # server -> collector -> family
        self.collection_seconds = Histogram(
            "stackyard_dbagent_collection_duration_seconds", "Duration of one collection, by collector.",
            ["collector"], buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5), registry=self.registry,
        )
        self.task_errors_total = task_errors(self.registry)
        self.errors_total = Counter(
            "stackyard_dbagent_collection_errors", "Failed collections (not retry waits) by server and collector.",
            ["server", "collector"], registry=self.registry,
        )
        self.webhook_failures_total = Counter(
            "stackyard_dbagent_webhook_failures", "Alert deliveries given up after alerts.max_age.",
            registry=self.registry,
        )
        self.storage_errors_total = Counter(
            "stackyard_dbagent_storage_errors", "Failed writes to the SQLite history.", registry=self.registry,
        )
        self.deliveries_pending = Gauge(
            "stackyard_dbagent_alert_deliveries_pending", "Alert deliveries not acknowledged by the webhook yet.",
            registry=self.registry,
        )

    def forget(self, server: str) -> None:
        """The instance left the configuration: all its series go."""
        self.up.pop(server, None)
        self.latest.pop(server, None)

    def down(self, server: str) -> None:
        """The instance cannot be reached: only `pg_up` (0) stays, as postgres_exporter does."""
        self.up[server] = 0.0
        self.latest.pop(server, None)

    def update(self, server: str, collector: str, reading: Reading) -> None:
        self.up[server] = 1.0
        self.latest.setdefault(server, {})[collector] = dict(reading.labelled)

    def drop(self, server: str, collector: str) -> None:
        """One collector failed: its series go rather than freeze at old values."""
        self.latest.get(server, {}).pop(collector, None)

    def postgres_text(self) -> str:
        """`pg_up` and the PostgreSQL families in the text format."""
        merged: dict[str, dict[str, exposition.Samples]] = {}
        for server, collectors in self.latest.items():
            for families in collectors.values():
                merged.setdefault(server, {}).update(families)
        return exposition.render(self.up, merged)


@dataclass
class InstanceMonitor:
    """One PostgreSQL instance: a connection per collector, one status, one reconnect backoff."""

    instance: Instance
    config: DbAgentConfig
    history: History
    exporter: Exporter
    alerts: Alerts
    status: str = "unknown"
    cause: str | None = None  # why the instance is unreachable or failing (kept until it recovers)
    conns: dict[str, psycopg.AsyncConnection] = field(default_factory=dict)
    previous: Previous = field(default_factory=Previous)
    notes: dict[str, str] = field(default_factory=dict)  # skipped collections that are not errors
    failing: dict[str, tuple[str, bool]] = field(default_factory=dict)  # collector -> (its error, a timeout?)
    retry_at: float = 0.0
    reconnect: Backoff = field(default_factory=lambda: Backoff(0.5, 30.0))
    logged: tuple[str, bool] | None = None
    clock: Callable[[], float] = time.time  # wall clock of the stored rows (a benchmark simulates a day with it)

    def __post_init__(self) -> None:
        self._record(None)

    @property
    def server(self) -> str:
        return self.instance.name

    def _record(self, seen: float | None) -> None:
        message = self.cause or ("; ".join([*(m for m, _ in self.failing.values()), *self.notes.values()]) or None)
        self.history.set_instance(self.server, self.instance.safe_connection, self.status, seen, message)

    def _move(self, wanted: str, cause: str | None, seen: float | None = None) -> None:
        """Change status (as the transitions allow) and cause; log once per change, never per retry."""
        before = self.status
        self.status, self.cause = transition(self.status, wanted), cause
        state = (self.status, cause is not None)
        if state != self.logged and (self.logged is not None or cause is not None):
            if cause is None:
                log.info("instance %s: %s -> %s", self.server, before, self.status)
            else:
                log.warning("instance %s: %s%s: %s (retrying with backoff)", self.server, before,
                            f" -> {self.status}" if before != self.status else "", cause)
        self.logged = state
        self._record(seen)

    async def _connection(self, name: str) -> psycopg.AsyncConnection | None:
        """This collector's connection; None while a reconnect is not due (not an error)."""
        conn = self.conns.get(name)
        if conn is not None and not conn.closed:
            return conn
        if time.monotonic() < self.retry_at:
            return None
        timeout_ms = int(self.config.statement_timeout * 1000)
        try:
            conn = await psycopg.AsyncConnection.connect(
                self.instance.connection, autocommit=True,
                connect_timeout=max(2, math.ceil(self.config.connect_timeout)),  # libpq's minimum is 2 s
                options=f"-c statement_timeout={timeout_ms} -c lock_timeout={timeout_ms}",
                application_name=f"stackyard-dbagent-{name}",
            )
        except psycopg.OperationalError:
            self.retry_at = time.monotonic() + self.reconnect.next_delay()
            raise
        self.reconnect.reset()
        self.conns[name] = conn
        return conn

    async def collect(self, name: str) -> Reading | None:
        """Run one collector now; never raises (failures become the collector's or the instance's status)."""
        started = time.monotonic()
        try:
            conn = await self._connection(name)
            if conn is None:
                return None
            reading = await REGISTRY[name].collect(conn, self.previous, self.config.top_queries)
        except TIMEOUTS as exc:
            self._collector_failed(name, f"{name}: {_first_line(exc)}", timeout=True)
            return None
        except psycopg.OperationalError as exc:
            await self._drop_connection(name)
            self.exporter.errors_total.labels(self.server, name).inc()
            self.exporter.down(self.server)
            self.failing.clear()  # the whole instance failed; its collectors start afresh on reconnect
            self._move("disconnected", _first_line(exc))
            return None
        except psycopg.Error as exc:
            self._collector_failed(name, f"{name}: {_first_line(exc)}", timeout=False)
            return None
        finally:
            self.exporter.collection_seconds.labels(name).observe(time.monotonic() - started)
        self._collected(name, reading)
        return reading

    def _collector_failed(self, name: str, message: str, timeout: bool) -> None:
        self.exporter.errors_total.labels(self.server, name).inc()
        self.exporter.drop(self.server, name)
        if name not in self.failing:  # once per episode
            log.warning("instance %s: collector %s failed: %s", self.server, name, message)
        self.failing[name] = (message, timeout)
        if timeout:  # the server answers: the instance stays as it is
            self._record(None)
        else:
            self._move("error", message)

    def _collected(self, name: str, reading: Reading) -> None:
        if self.failing.pop(name, None) is not None:
            log.info("instance %s: collector %s works again", self.server, name)
        if reading.note:
            self.notes[name] = reading.note
        else:
            self.notes.pop(name, None)
        now = self.clock()
        for table, rows in reading.rows.items():
            self.history.insert(table, self.server, rows, now)
        self.exporter.update(self.server, name, reading)
        hard_errors = [message for message, timeout in self.failing.values() if not timeout]
        self._move("error" if hard_errors else "connected", hard_errors[0] if hard_errors else None, now)
        self.history.collected()
        self.alerts.evaluate(self.server, reading.values, now)

    async def _drop_connection(self, name: str) -> None:
        conn = self.conns.pop(name, None)
        if conn is not None:
            try:
                await conn.close()
            except Exception:  # already broken; nothing to save
                pass

    async def run_collector(self, name: str, on_error: Callable[[], None] | None = None) -> None:
        """Collect every interval; `collect` turns database failures into status, and anything else is logged,
        counted and survived (`tasks.forever`)."""
        async def step() -> float:
            await self.collect(name)
            return self.config.intervals[name]  # read each time: a reload may change it

        await forever(f"collector {name} of {self.server}", step, self.config.intervals[name], log, on_error)

    async def close(self) -> None:
        for name in list(self.conns):
            await self._drop_connection(name)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:500]
