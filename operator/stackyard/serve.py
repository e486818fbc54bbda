"""`stackyard run` and `stackyard api`: wiring the operator, the agent API and /metrics into one process."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timezone

import psycopg
import psycopg_pool
from aiohttp import web

from .api import ApiSettings, create_app
from .api.app import LIMITER_KEY
from .api.server import ApiRunner, ConnectionGuard, quiet_accept_errors
from .api.waiters import StateWaiters
from .config import GROUP, VERSION, OperatorConfig
from .controller.leader import LeaseElector
from .controller.operator import run_operator
from .controller.status import agent_phase
from .httpserver import Readiness, metrics_app, serving, split_address
from .kube import CALL_ERRORS, Kube, describe, kube_configuration
from .metrics import Metrics, heartbeat_age
from .store import Store, within
from .tasks import Step, forever
from .tls import ReloadingContext, certificate_expiry, server_context

UNAVAILABLE = (psycopg.OperationalError, psycopg_pool.PoolTimeout)

log = logging.getLogger(__name__)

# The agent gauges' one read: a database that does not answer within this long is reported down.
ROUND_TRIP_DEADLINE = 5.0


async def agents_gauge_loop(store: Store, config: OperatorConfig, metrics: Metrics) -> None:
    """Keep the agent gauges current (every heartbeat interval), by the one phase rule `agent_phase`, and
    `stackyard_database_up` by whether that round trip to PostgreSQL succeeded within `ROUND_TRIP_DEADLINE`
    (a hung database counts as down, not only a refused connection)."""
    async def step() -> None:
        try:
            beats = await within(ROUND_TRIP_DEADLINE, store.agent_heartbeats(), "the agent gauges' round trip")
        except UNAVAILABLE as exc:  # an outage: the agent gauges keep their last values
            log.debug("agent phase counts unavailable: %s", exc)
            metrics.database_up.set(0)
            return
        metrics.database_up.set(1)
        now = datetime.now(timezone.utc)
        metrics.observe_agents((agent_phase(beat, now, config.stale_after) for beat in beats),
                               (heartbeat_age(beat, now) for beat in beats))
        metrics.observe_pool(store.pool.get_stats())

    await forever("agent phase gauges", step, config.heartbeat_interval, log,
                  metrics.task_errors_total.labels("agent-gauges").inc)


async def purge_once(store: Store, config: OperatorConfig, metrics: Metrics) -> dict[str, int]:
    """One retention pass: soft-deleted rows past the retention age, then live agent events past theirs (in
    batches, so a large backlog never holds one long transaction)."""
    purged = dict(await store.purge_soft_deleted(config.retention_age))
    events = 0
    while (batch := await store.purge_agent_events(config.event_retention_age)) > 0:
        events += batch
    purged["agent_events_expired"] = events
    for table, count in purged.items():
        metrics.retention_purged_total.labels(table).inc(count)
    return purged


async def retention_loop(store: Store, config: OperatorConfig, metrics: Metrics) -> None:
    """Retention on a schedule (`purge_once`); an outage is logged and the next cycle tries again."""
    async def step() -> None:
        try:
            purged = await purge_once(store, config, metrics)
        except UNAVAILABLE as exc:
            log.warning("retention purge failed (the database is unavailable), will retry next cycle: %s", exc)
            return
        if any(purged.values()):
            log.info("retention purged %s", ", ".join(f"{n} {t}" for t, n in purged.items() if n))

    await forever("retention", step, config.retention_interval, log, metrics.task_errors_total.labels("retention").inc)


# Retention and the gauges: a batch of deletes may take a while on a large table, but never forever.
MAINTENANCE_DEADLINE = 120.0


@dataclass
class RunAddresses:
    metrics: str
    health: str
    api: str | None = None


@dataclass
class ApiServer:
    """A running agent API: its store (pool), its listener and cache, its app."""

    store: Store
    waiters: StateWaiters
    app: web.Application


@contextlib.asynccontextmanager
async def api_serving(
    database_url: str, address: str, metrics: Metrics, pool_max_size: int, settings: ApiSettings,
    listen_url: str | None = None,
) -> AsyncIterator[ApiServer]:
    """The agent API on `address` with its own pool and LISTEN connection (on `listen_url` when given).

    Every database call has a deadline (`settings.database_deadline`) and every connection a server-side
    statement timeout just above it; connections beyond the limit are refused on arrival.
    """
    store = await Store.open(database_url, min_size=1, max_size=pool_max_size, timeout=settings.database_timeout,
                             deadline=settings.database_deadline, statement_timeout=settings.database_deadline + 1)
    waiters = StateWaiters(store, listen_url or database_url)
    tls = api_tls(settings, metrics)
    background = [asyncio.create_task(waiters.run(), name="state-listener")]
    if tls is not None:
        background.append(asyncio.create_task(forever(
            "TLS renewal", _refreshing(tls), settings.tls_reload_interval, log,
            metrics.task_errors_total.labels("tls-renewal").inc), name="tls-renewal"))
    quiet_accept_errors(asyncio.get_running_loop(), metrics.api_accept_errors_total.inc)
    try:
        app = create_app(store, metrics, waiters, settings)
        limit = app[LIMITER_KEY].max_connections()
        guard = ConnectionGuard(limit, metrics.api_connections_refused_total.inc)
        runner = ApiRunner(app, settings.idle_timeout, guard, shutdown_timeout=settings.shutdown_timeout)
        async with serving(app, address, runner, tls.context if tls else None):
            log.debug("the agent API accepts up to %d connections", limit)
            yield ApiServer(store, waiters, app)
    finally:
        for task in background:
            await _cancel(task)
        await store.close()


def api_tls(settings: ApiSettings, metrics: Metrics) -> ReloadingContext | None:
    """The API's TLS context from its files (None: plain HTTP), reporting renewals through the metrics."""
    if not settings.tls_cert_file:
        return None

    def loaded(context: ReloadingContext) -> None:
        expiry = certificate_expiry(context.cert_file) if context.cert_file else None
        if expiry is not None:
            metrics.tls_certificate_expiry.set(expiry.timestamp())

    return server_context(settings.tls_cert_file, settings.tls_key_file or settings.tls_cert_file,
                          settings.tls_client_ca_file, lambda _: metrics.tls_reload_errors_total.inc(), loaded)


def _refreshing(tls: ReloadingContext) -> Step:
    async def step() -> None:
        tls.refresh()

    return step


async def _cancel(task: asyncio.Task) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def run_all(config: OperatorConfig, addresses: RunAddresses, api_settings: ApiSettings | None = None) -> None:
    """Run until Kopf stops (SIGTERM/SIGINT): the operator, the agent API, /metrics, retention."""
    metrics = Metrics()
    readiness = Readiness(reason="standing by for the leader Lease" if config.leader_election_namespace else "starting")
    started = asyncio.Event()
    maintenance = await Store.open(config.database_url, min_size=1, max_size=2, deadline=MAINTENANCE_DEADLINE,
                                   statement_timeout=MAINTENANCE_DEADLINE)
    background = [
        asyncio.create_task(retention_loop(maintenance, config, metrics), name="retention"),
        asyncio.create_task(agents_gauge_loop(maintenance, config, metrics), name="agent-gauges"),
        asyncio.create_task(become_ready(config, started, readiness, addresses), name="readiness"),
    ]
    try:
        async with contextlib.AsyncExitStack() as stack:
            await stack.enter_async_context(serving(metrics_app(metrics, readiness), addresses.metrics))
            if addresses.api:
                await stack.enter_async_context(
                    api_serving(config.database_url, addresses.api, metrics, config.pool_max_size,
                                api_settings or ApiSettings())
                )
            host, port = split_address(addresses.health)
            liveness = f"http://{host}:{port}/healthz"
            if config.leader_election_namespace:
                await run_as_leader(config, metrics, liveness, started)
            else:
                await run_operator(config, metrics, liveness_endpoint=liveness, ready_flag=started)
    finally:
        for task in background:
            await _cancel(task)
        await maintenance.close()


WATCHED = ((f"{GROUP}/{VERSION}", "Stack"), (f"{GROUP}/{VERSION}", "AgentTarget"), (f"{GROUP}/{VERSION}", "Agent"),
           ("v1", "Secret"))  # Secrets: the labelled ones Stacks reference


def watched_scopes(config: OperatorConfig) -> list[tuple[str | None, str, str]]:
    """(namespace or None for all, apiVersion, kind) of every watch the operator runs."""
    scopes = [None] if config.all_namespaces else config.namespaces
    return [(ns, api_version, kind) for ns in scopes for api_version, kind in WATCHED]


async def become_ready(config: OperatorConfig, started: asyncio.Event, readiness: Readiness,
                       addresses: RunAddresses) -> None:
    """Once Kopf has started, check that every watch is allowed, then say so once (log and /readyz)."""
    await started.wait()
    readiness.reason = "checking that the operator may watch its resources"
    async with Kube(kube_configuration(config.kube_connection), user_agent="stackyard-operator") as kube:
        reported = ""
        while True:
            refused = []
            for namespace, api_version, kind in watched_scopes(config):
                try:
                    await kube.list(api_version, kind, namespace, limit=1)
                except CALL_ERRORS as exc:
                    refused.append(f"{kind} in {namespace or 'all namespaces'}: {describe(exc)}")
            if not refused:
                break
            readiness.reason = "cannot list " + "; ".join(refused)
            if readiness.reason != reported:
                log.error("the operator is not ready: %s (check its RBAC for the watched namespaces)", readiness.reason)
                reported = readiness.reason
            await asyncio.sleep(5)
    readiness.ready, readiness.reason = True, ""
    scope = "all namespaces" if config.all_namespaces else "namespaces " + ", ".join(config.namespaces)
    log.info("stackyard is ready: watching %s; agent API on %s; metrics on %s; liveness on %s", scope,
             addresses.api or "(not served)", addresses.metrics, addresses.health)


async def run_as_leader(config: OperatorConfig, metrics: Metrics, liveness: str, started: asyncio.Event) -> None:
    """Stand by until this replica holds the Lease, then run the operator while renewing it."""
    async with Kube(kube_configuration(config.kube_connection), user_agent="stackyard-operator") as kube:
        elector = LeaseElector(kube, config.leader_election_namespace or "", config.identity)
        await elector.acquire()
        stop = asyncio.Event()
        keeper = asyncio.create_task(elector.keep(), name="lease-keeper")
        operator = asyncio.create_task(
            run_operator(config, metrics, stop_flag=stop, liveness_endpoint=liveness, ready_flag=started)
        )
        done, _ = await asyncio.wait({keeper, operator}, return_when=asyncio.FIRST_COMPLETED)
        if keeper in done:
            stop.set()
            await operator
            keeper.result()  # raises LostLeadership: the process exits non-zero and restarts as a candidate
        await _cancel(keeper)
        operator.result()


async def run_api(
    database_url: str, api_address: str, metrics_address: str, pool_max_size: int, settings: ApiSettings
) -> None:
    """`stackyard api`: the agent API alone, until SIGTERM/SIGINT."""
    metrics = Metrics()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with serving(metrics_app(metrics), metrics_address), api_serving(
        database_url, api_address, metrics, pool_max_size, settings
    ):
        await stop.wait()
    log.info("stopping the agent API")
