"""Kopf wiring: thin module-level handlers over the kinds' modules (`stacks.py`, `targets.py`, `agents.py`).

Handlers share one `Context` per operator through Kopf's memo (`memo.ctx`), so
no state is global and tests can run several operators; `running.py` turns
their work into conditions, Events and retries; `build_registry` registers the
handlers on a fresh registry with the configured intervals.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Mapping
from typing import Any, cast

import kopf

from ..config import FINALIZER, GROUP, VERSION, OperatorConfig
from ..kube import Kube, Ref, kube_configuration
from ..store import Store
from .conditions import Result, now_rfc3339, stalled_outcome, with_outcome
from .events import announce_stall, post_event
from .mirror import Mirror, register_indexes, report_failures
from .agents import agent_status_patch, delete_agent, reconcile_agent, wait_for_release
from .stacks import STACK_STATUS_KEYS, delete_stack, observe_stack, reconcile_stack
from .targets import agent_target_status_patch, delete_agent_target, reconcile_agent_target
from .render import InvalidSpec
from .secrets import SECRET_LABEL
from .running import (
    Context,
    object_name,
    run_delete,
    run_reconcile,
    tolerant,
    unobserved,
)
from .status import visible
from .storage import StatusDigestDiffBaseStorage

log = logging.getLogger(__name__)


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
        result, created = await reconcile_stack(ctx.require_store(), body, now_rfc3339(), ctx.read_secret,
                                                ctx.refreshed_keyring())
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
        result = await observe_stack(ctx.require_store(), body, now_rfc3339(), ctx.read_secret,
                                     ctx.refreshed_keyring())
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
    """Let the Agent go once `agents.agent_release` allows it; then its key is revoked."""
    decision = await wait_for_release(ctx.require_store(), ctx.require_kube(), ctx.config, body)
    if decision.left_behind:
        log.warning("Agent %s deleted: %s", object_name(body), decision.message)
        await post_event(ctx.require_kube(), body, "Warning", "ObjectsLeftBehind", decision.message)
    await delete_agent(ctx.require_store(), body)


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


# Secrets ---------------------------------------------------------------------------------------------


async def secret_changed(body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger, **kwargs: Any) -> None:
    """A labelled Secret changed (or came, or went): every Stack of its namespace that references it reconciles
    now, so a new version carries the new data within seconds (or the Stack says the Secret is missing)."""
    ctx: Context = memo.ctx
    meta = body["metadata"]
    try:
        entries = list(kwargs["stacks_by_secret"][(meta["namespace"], meta["name"])])
    except KeyError:
        return
    for entry in entries:
        await reconcile_stack_now(ctx, memo, entry, logger)


async def reconcile_stack_now(ctx: Context, memo: kopf.Memo, entry: Mapping[str, Any], logger: kopf.Logger) -> None:
    """Run the Stack handler for an indexed Stack outside its own events, and write what it concluded."""
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Stack", "metadata": entry["body"]["metadata"],
            "spec": entry["body"]["spec"], "status": entry["status"]}
    patch = kopf.Patch()
    try:
        await stack_changed(body=kopf.Body(cast(kopf.RawBody, body)), patch=patch, memo=memo, logger=logger, retry=0)
    except kopf.TemporaryError as exc:
        log.warning("Stack %s: a referenced Secret changed and the reconcile failed (%s); the resync retries",
                    object_name(body), exc)
    if patch.status:
        await ctx.require_kube().merge_patch(Ref(f"{GROUP}/{VERSION}", "Stack", entry["name"], entry["namespace"]),
                                             {"status": dict(patch.status)}, "status")


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
    kopf.on.event("v1", "secrets", labels={SECRET_LABEL: "true"}, registry=registry)(secret_changed)
    return registry
