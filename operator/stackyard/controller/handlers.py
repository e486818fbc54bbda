"""Kopf wiring: thin module-level handlers that call `reconcile` and turn its outcome into status and retries.

Handlers share one `Context` per operator through Kopf's memo (`memo.ctx`), so
no state is global and tests can run several operators; `build_registry`
registers the handlers on a fresh registry with the configured intervals.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime, timezone
from dataclasses import dataclass, field
from typing import Any

import kopf
import psycopg
import psycopg_pool

from ..config import FINALIZER, GROUP, VERSION, OperatorConfig
from ..kube import CALL_ERRORS, DynamicApiError, Kube, Ref, describe, kube_configuration
from ..logs import Episodes
from ..metrics import Metrics
from ..store import Store
from .conditions import Outcome, becomes_stalled, conditions_for, now_rfc3339, retrying_outcome, stalled_outcome
from .events import MAX_EVENT_MESSAGE, Stalls, announce_stall, post_event
from .mirror import Mirror, register_indexes, report_failures
from .observe import STACK_STATUS_KEYS, agent_status_patch, agent_target_status_patch, with_outcome
from .reconcile import (
    Result,
    agent_release,
    observe_stack,
    delete_agent,
    delete_agent_target,
    delete_stack,
    reconcile_agent,
    reconcile_agent_target,
    reconcile_stack,
)
from .render import InvalidSpec
from .status import visible
from .storage import StatusDigestDiffBaseStorage

log = logging.getLogger(__name__)
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (psycopg.OperationalError, psycopg_pool.PoolTimeout, *CALL_ERRORS)
MAX_RETRY_DELAY = 30.0
AGENT_RELEASE_POLL = 1.0  # seconds between checks of a deleted Agent's agent (it heartbeats every 10 s)


@dataclass
class Context:
    """What every handler of one operator shares."""

    config: OperatorConfig
    metrics: Metrics
    defects: Episodes = field(default_factory=lambda: Episodes(quiet=3600.0))  # internal errors, logged once
    stalls: Stalls = field(default_factory=Stalls)  # Stalled verdicts announced (one Event each)
    store: Store | None = None
    kube: Kube | None = None
    mirror: Mirror | None = None
    mirror_task: asyncio.Task | None = None

    def require_store(self) -> Store:
        if self.store is None:
            raise kopf.TemporaryError("the store is not open yet", delay=1)
        return self.store

    def require_kube(self) -> Kube:
        if self.kube is None:
            raise kopf.TemporaryError("not logged in to the Kubernetes API yet", delay=1)
        return self.kube


def exact_namespaces(config: OperatorConfig) -> bool:
    """True when the operator watches only namespaces named exactly (no `*`, `?`, `[...]` or `!` patterns)."""
    return not config.all_namespaces and not any(set(ns) & set("*?[]!") for ns in config.namespaces)


def configure_settings(settings: kopf.OperatorSettings, config: OperatorConfig) -> None:
    """Kopf settings (docs/architecture.md, "Operator"): own finalizer and prefix, small annotations, quiet events."""
    settings.persistence.finalizer = FINALIZER
    # Kopf's state in the status (status.kopf): a reconcile is one status write, not a metadata patch as well.
    settings.persistence.progress_storage = kopf.StatusProgressStorage(field="status.kopf.progress")
    settings.persistence.diffbase_storage = StatusDigestDiffBaseStorage(prefix=GROUP)
    # Log records of WARNING and above become Kubernetes Events (Kopf posts none unless `loggers` is on);
    # Normal milestones are posted explicitly (see `post_milestones`), never one per heartbeat.
    settings.posting.loggers = True
    settings.posting.level = logging.WARNING
    settings.posting.reporting_component = "stackyard"
    settings.peering.standalone = True
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.networking.request_timeout = 60
    # Watching named namespaces needs neither the cluster-wide namespace list nor the CRD watch, so a
    # Role-only install works: Kopf skips both scans (it would otherwise spend a minute on 403s first).
    settings.scanning.disabled = exact_namespaces(config)


def as_invalid_spec(exc: Exception) -> InvalidSpec | None:
    """Errors that retrying cannot fix, as the Stalled reason they become; None for transient ones.

    The API server's 4xx answers are permanent except 409 (conflict) and 429 (throttled);
    a value the database cannot hold (too long, bad encoding) is permanent too.
    """
    if isinstance(exc, DynamicApiError) and 400 <= int(exc.status or 0) < 500 and exc.status not in (409, 429):
        return InvalidSpec("KubernetesAPIRejected", f"the API server refused a write ({describe(exc)})")
    if isinstance(exc, psycopg.errors.DataError):
        return InvalidSpec("ValueNotStorable", f"a value cannot be stored: {exc.diag.message_primary or exc}")
    return None


def retry_delay(retry: int) -> float:
    return min(2.0 ** retry, MAX_RETRY_DELAY)


def write_outcome(patch: kopf.Patch, body: Mapping[str, Any], outcome: Outcome, fields: Mapping[str, Any]) -> None:
    """Put status fields, conditions and observedGeneration into the patch."""
    generation = body.get("metadata", {}).get("generation")
    for key, value in with_outcome(Result(outcome, dict(fields)), generation, body.get("status") or {}).items():
        patch.status[key] = value


def post_milestones(body: kopf.Body, result: Result) -> None:
    for milestone in result.milestones:
        kopf.event(body, type="Normal", reason=milestone.reason, message=milestone.message)


async def run_reconcile(
    ctx: Context,
    kind: str,
    body: kopf.Body,
    patch: kopf.Patch,
    logger: kopf.Logger,
    retry: int,
    work: Callable[[], Awaitable[Result]],
) -> None:
    """Run one reconcile and record its outcome; the only place errors become conditions.

    Input that retrying cannot fix ends Stalled, with one Warning Event named after the reason when the
    object becomes Stalled (not again on every restart), and the handler returns: Kopf records the generation
    as handled, and nothing retries it until the spec changes. A transient error is retried with backoff. Any
    other error is a defect: its traceback goes to the operator's log once per object and kind of error, the
    object gets `Ready=False`/`InternalError` and a retry, and no Event or condition carries a traceback or a
    path of the server.
    """
    started = time.monotonic()
    previous = body.get("status") or {}
    try:
        try:
            result = await work()
        except (DynamicApiError, psycopg.errors.DataError) as exc:
            permanent = as_invalid_spec(exc)
            if permanent is None:
                raise
            raise permanent from exc
    except InvalidSpec as exc:
        ctx.metrics.reconcile_total.labels(kind, "stalled").inc()
        ctx.metrics.reconcile_errors_total.labels(kind, exc.reason).inc()
        write_outcome(patch, body, stalled_outcome(exc.reason, exc.message), exc.status)
        generation = body.get("metadata", {}).get("generation")
        if becomes_stalled(previous, generation, exc.reason) and ctx.stalls.first(
                str(body.get("metadata", {}).get("uid")), generation, exc.reason):
            log.warning("%s %s is stalled (%s): %s", kind, object_name(body), exc.reason, exc.message)
            kopf.event(body, type="Warning", reason=exc.reason, message=exc.message[:MAX_EVENT_MESSAGE])
        return
    except TRANSIENT_ERRORS as exc:
        database = isinstance(exc, (psycopg.OperationalError, psycopg_pool.PoolTimeout))
        reason = "DatabaseUnavailable" if database else "KubernetesAPIError"
        detail = str(exc) if database else describe(exc)
        ctx.metrics.reconcile_total.labels(kind, "retry").inc()
        ctx.metrics.reconcile_errors_total.labels(kind, reason).inc()
        write_outcome(patch, body, retrying_outcome(reason, f"will retry: {detail}"), {})
        log.warning("%s %s reconcile failed (%s), retrying: %s", kind, object_name(body), reason, detail)
        raise kopf.TemporaryError(str(exc), delay=retry_delay(retry)) from None
    except Exception as exc:  # a defect: say so plainly, keep the traceback in the log, retry slowly
        ctx.metrics.reconcile_total.labels(kind, "retry").inc()
        ctx.metrics.reconcile_errors_total.labels(kind, "InternalError").inc()
        what = type(exc).__name__
        if ctx.defects.starts(f"{body.get('metadata', {}).get('uid')}/{what}"):
            log.error("reconciling %s %s failed with an internal error", kind, object_name(body), exc_info=exc)
        message = f"reconciling failed with an internal error ({what}); the operator's log has the details"
        write_outcome(patch, body, retrying_outcome("InternalError", message, ready="False"), {})
        raise kopf.TemporaryError(f"internal error ({what}); see the operator's log", delay=MAX_RETRY_DELAY) from None
    finally:
        ctx.metrics.reconcile_duration_seconds.labels(kind).observe(time.monotonic() - started)
    if result.outcome.ready == "True":
        ctx.metrics.reconcile_total.labels(kind, "success").inc()
    else:  # an expected wait (a dependency that does not exist yet): INFO, no retry loop
        ctx.metrics.reconcile_total.labels(kind, "waiting").inc()
        logger.info("%s is waiting (%s): %s", kind, result.outcome.reason, result.outcome.message)
    write_outcome(patch, body, result.outcome, result.status)
    post_milestones(body, result)


def object_name(body: Mapping[str, Any]) -> str:
    meta = body.get("metadata") or {}
    return f"{meta.get('namespace')}/{meta.get('name')}"


async def run_delete(ctx: Context, kind: str, logger: kopf.Logger, retry: int, work: Callable[[], Awaitable[None]]) -> None:
    """Deletion work behind the finalizer: transient errors keep the finalizer and retry."""
    try:
        await work()
    except TRANSIENT_ERRORS as exc:
        ctx.metrics.reconcile_errors_total.labels(kind, "DeleteFailed").inc()
        logger.error("deleting %s failed, retrying: %s", kind, exc)
        raise kopf.TemporaryError(str(exc), delay=retry_delay(retry)) from None


def tolerant(timer: Callable[..., Awaitable[None]]) -> Callable[..., Awaitable[None]]:
    """A resync timer that skips a cycle on transient errors instead of backing off for a minute."""

    @functools.wraps(timer)
    async def wrapper(*args: Any, logger: kopf.Logger, **kwargs: Any) -> None:
        try:
            await timer(*args, logger=logger, **kwargs)
        except TRANSIENT_ERRORS as exc:
            logger.debug("resync skipped: %s", exc)

    return wrapper


# Handlers ---------------------------------------------------------------------------------------
# Each is a module-level function over the per-operator `Context` that Kopf hands every handler as
# `memo.ctx` (Kopf gives each object a shallow copy of the operator's memo, so all share one Context).
# `build_registry` at the end registers them; the resync intervals come from the config.


async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, logger: kopf.Logger, **kwargs: Any) -> None:
    """Kopf settings, the store, the Kubernetes client and the status mirror."""
    ctx: Context = memo.ctx
    config = ctx.config
    configure_settings(settings, config)
    ctx.store = await Store.open(config.database_url, max_size=config.pool_max_size, timeout=config.pool_timeout,
                                 deadline=config.database_deadline, statement_timeout=config.database_deadline)
    ctx.kube = Kube(kube_configuration(config.kube_connection), user_agent="stackyard-operator")
    ctx.mirror = Mirror(
        store=ctx.store,
        database_url=config.database_url,
        kube=ctx.require_kube,
        metrics=ctx.metrics,
        config=config,
        stacks_by_uid=kwargs["stacks_by_uid"],
        targets_by_stack=kwargs["targets_by_stack"],
        targets_by_agent=kwargs["targets_by_agent"],
        agents_by_uid=kwargs["agents_by_uid"],
        selector_targets=kwargs["selector_targets"],
        stalls=ctx.stalls,
    )
    ctx.mirror_task = asyncio.create_task(ctx.mirror.run(), name="status-mirror")
    logger.info("store opened; status mirror started")


async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    ctx: Context = memo.ctx
    if ctx.mirror_task is not None:
        ctx.mirror_task.cancel()
    if ctx.kube is not None:
        await ctx.kube.close()
    if ctx.store is not None:
        await ctx.store.close()


def login(memo: kopf.Memo, **kwargs: Any) -> kopf.ConnectionInfo | None:
    """Kopf's watches log in through the official client too (service account or kubeconfig, exec plugins)."""
    connection: kopf.ConnectionInfo | None = memo.ctx.config.kube_connection
    return connection or kopf.login_via_client(memo=memo, **kwargs)


def probe_store(memo: kopf.Memo, **_: Any) -> dict[str, int]:
    ctx: Context = memo.ctx
    stats = ctx.store.pool.get_stats() if ctx.store else {}
    ctx.metrics.observe_pool(stats)
    return {"pool_size": stats.get("pool_size", 0)}


# Stack -----------------------------------------------------------------------------------------


async def stack_changed(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, logger: kopf.Logger, retry: int,
                        **_: Any) -> None:
    """Store the Stack and its deployment object; AgentTargets waiting for it are bound by the mirror."""
    ctx: Context = memo.ctx

    async def work() -> Result:
        result, created = await reconcile_stack(ctx.require_store(), body, now_rfc3339())
        if created:
            ctx.metrics.deployment_objects_emitted_total.inc()
        ctx.metrics.observe_stack(body["metadata"]["uid"], result.status)
        if ctx.mirror is not None:
            # AgentTargets naming this Stack may be waiting for it (or for its new uid): the mirror binds them.
            # Kopf indexes an object before handling it, and this note follows the commit, so none is missed.
            ctx.mirror.note_targets_of(body["metadata"]["namespace"], body["metadata"]["name"])
        return result

    await run_reconcile(ctx, "Stack", body, patch, logger, retry, work)


async def stack_deleted(body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger, retry: int, **_: Any) -> None:
    """Soft-delete: the database emits the deletion marker."""
    ctx: Context = memo.ctx
    await run_delete(ctx, "Stack", logger, retry, lambda: delete_stack(ctx.require_store(), body))
    ctx.metrics.forget_stack(body["metadata"]["uid"])
    if ctx.mirror is not None:
        ctx.mirror.note_targets_of(body["metadata"]["namespace"], body["metadata"]["name"])


@tolerant
async def stack_resync(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, logger: kopf.Logger,
                       **kwargs: Any) -> None:
    """Safety net behind the mirror and Kopf's own bookkeeping: the whole status, recomputed from the spec and
    the store (never from what the status says), written when it differs; a generation no handler observed is
    reconciled here."""
    ctx: Context = memo.ctx
    if body.get("metadata", {}).get("deletionTimestamp"):
        return
    if unobserved(body):
        await stack_changed(body=body, patch=patch, memo=memo, logger=logger, retry=0)
        return
    try:
        result = await observe_stack(ctx.require_store(), body, now_rfc3339())
    except InvalidSpec as exc:
        result = Result(stalled_outcome(exc.reason, exc.message), exc.status)
    if result.needs_write:
        await stack_changed(body=body, patch=patch, memo=memo, logger=logger, retry=0)
        return
    previous = body.get("status") or {}
    status = with_outcome(result, body["metadata"].get("generation"), previous)
    ctx.metrics.observe_stack(body["metadata"]["uid"], status)
    keys = tuple(key for key in STACK_STATUS_KEYS if key in status)  # a Stalled spec leaves the rest as it was
    if visible(status, keys) != visible(previous, keys):
        patch.status.update(status)
        if "agents" in status:
            await report_failures(ctx.require_kube(), body, previous.get("agents"), status["agents"])
        ctx.metrics.status_patches_total.labels("Stack").inc()


def unobserved(body: Mapping[str, Any]) -> bool:
    """True when the object's current generation was never observed: Kopf merged changes that ended where they
    started (A->B->A: no diff, no handler), or a forged `status.kopf` made it think the work was done."""
    meta = body.get("metadata") or {}
    return meta.get("generation") is not None and (body.get("status") or {}).get(
        "observedGeneration") != meta.get("generation")


# AgentTarget ------------------------------------------------------------------------------------


async def agent_target_changed(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, logger: kopf.Logger,
                               retry: int, **_: Any) -> None:
    """Bind what the AgentTarget selects; its Stacks (old and new) count it at once: the mirror hears every target
    row written or deleted (`stackyard_state`)."""
    ctx: Context = memo.ctx

    await run_reconcile(ctx, "AgentTarget", body, patch, logger, retry,
                        lambda: reconcile_agent_target(ctx.require_store(), body))


async def agent_target_deleted(body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger, retry: int,
                               **_: Any) -> None:
    """Remove its target rows (their stacks recount at once: the mirror hears the rows go)."""
    ctx: Context = memo.ctx
    await run_delete(ctx, "AgentTarget", logger, retry, lambda: delete_agent_target(ctx.require_store(), body))


@tolerant
async def agent_target_resync(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, logger: kopf.Logger,
                              **_: Any) -> None:
    """Safety net: the status as the store has it; a generation no handler observed is reconciled here."""
    ctx: Context = memo.ctx
    if unobserved(body) and not body.get("metadata", {}).get("deletionTimestamp"):
        await agent_target_changed(body=body, patch=patch, memo=memo, logger=logger, retry=0)
        return
    previous = body.get("status") or {}
    status = await agent_target_status_patch(ctx.require_store(), body, previous)
    if status is not None:
        patch.status.update(status)
        await announce_stall(ctx.require_kube(), body, previous, status, ctx.stalls)
        ctx.metrics.status_patches_total.labels("AgentTarget").inc()


# Agent ----------------------------------------------------------------------------------------------


async def agent_changed(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, logger: kopf.Logger, retry: int,
                        **_: Any) -> None:
    """Register the agent, its grants and labels, and issue its key; AgentTargets naming it are revisited."""
    ctx: Context = memo.ctx

    async def work() -> Result:
        result = await reconcile_agent(ctx.require_store(), ctx.require_kube(), ctx.config, body)
        if ctx.mirror is not None:  # AgentTargets naming or selecting this agent: newly permitted, or no longer
            ctx.mirror.note_agent(uuid.UUID(body["metadata"]["uid"]))
        return result

    await run_reconcile(ctx, "Agent", body, patch, logger, retry, work)


async def agent_deleted(body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger, retry: int, **_: Any) -> None:
    """Let the agent remove what it holds (its desired state is empty from now on), then revoke its key."""
    ctx: Context = memo.ctx
    await run_delete(ctx, "Agent", logger, retry, lambda: release_agent(ctx, body))
    if ctx.mirror is not None:  # selector AgentTargets drop it
        ctx.mirror.note_agent(uuid.UUID(body["metadata"]["uid"]))


async def release_agent(ctx: Context, body: kopf.Body) -> None:
    """Wait (polling the store) until `agent_release` lets the Agent go, showing why in its status meanwhile."""
    store, agent_id = ctx.require_store(), uuid.UUID(body["metadata"]["uid"])
    shown = ""
    while True:
        agent = await store.begin_agent_deletion(agent_id)
        decision = agent_release(agent, datetime.now(timezone.utc), ctx.config.stale_after,
                                 ctx.config.agent_deletion_timeout)
        if decision.done:
            break
        if decision.message != shown:
            shown = decision.message
            log.info("Agent %s is being deleted: %s", object_name(body), decision.message)
            outcome = retrying_outcome("Deleting", decision.message, ready="False")
            conditions = conditions_for(outcome, body["metadata"].get("generation"), (body.get("status") or {}).get(
                "conditions"))
            await ctx.require_kube().merge_patch(Ref(f"{GROUP}/{VERSION}", "Agent", body["metadata"]["name"],
                                                     body["metadata"]["namespace"]),
                                                 {"status": {"conditions": conditions}}, "status")
        await asyncio.sleep(AGENT_RELEASE_POLL)
    if decision.left_behind:
        log.warning("Agent %s deleted: %s", object_name(body), decision.message)
        await post_event(ctx.require_kube(), body, "Warning", "ObjectsLeftBehind", decision.message)
    await delete_agent(store, body)


@tolerant
async def agent_phase_timer(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, logger: kopf.Logger,
                            **_: Any) -> None:
    """Phase (Pending, Active, Stale) as time passes without heartbeats. The agent is the store's row of this
    object's uid, never what the status says."""
    ctx: Context = memo.ctx
    if body.get("metadata", {}).get("deletionTimestamp"):
        return
    previous = body.get("status") or {}
    status = await agent_status_patch(ctx.require_store(), uuid.UUID(body["metadata"]["uid"]), previous, ctx.config)
    if status is not None:
        patch.status.update(status)
        ctx.metrics.status_patches_total.labels("Agent").inc()


async def agent_resync(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
    """A generation no handler observed (Kopf merged changes that ended where they started, or a forged
    `status.kopf`) is reconciled here, once the Agent has been idle for a resync interval."""
    if unobserved(body) and not body.get("metadata", {}).get("deletionTimestamp"):
        await agent_changed(body=body, patch=patch, memo=memo, logger=logger, retry=0)


def build_registry(config: OperatorConfig) -> kopf.OperatorRegistry:
    """A fresh Kopf registry with the handlers above (timers at the configured intervals).

    Run it with `memo=kopf.Memo(ctx=Context(config, metrics))`: see `controller/operator.py`.
    """
    registry = kopf.OperatorRegistry()
    register_indexes(registry)
    kopf.on.startup(registry=registry)(startup)
    kopf.on.cleanup(registry=registry)(cleanup)
    kopf.on.login(registry=registry)(login)
    kopf.on.probe(id="store", registry=registry)(probe_store)
    for plural, changed, deleted, timer in (
        ("stacks", stack_changed, stack_deleted, stack_resync),
        ("agenttargets", agent_target_changed, agent_target_deleted, agent_target_resync),
        ("agents", agent_changed, agent_deleted, agent_resync),
    ):
        for register in (kopf.on.resume, kopf.on.create, kopf.on.update):
            register(GROUP, VERSION, plural, registry=registry)(changed)
        kopf.on.delete(GROUP, VERSION, plural, registry=registry)(deleted)
        if timer is not None:
            kopf.timer(GROUP, VERSION, plural, interval=config.resync_interval, idle=config.resync_interval,
                       registry=registry)(timer)
    kopf.timer(GROUP, VERSION, "agents", interval=config.heartbeat_interval, registry=registry)(agent_phase_timer)
    return registry
