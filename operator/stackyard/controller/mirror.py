"""Mirrors agents' heartbeats and events from PostgreSQL into the custom resources' status.

Triggers NOTIFY on heartbeats (`stackyard_agents`), events
(`stackyard_events`) and target rows written or deleted (`stackyard_state`:
an AgentTarget bound or removed, a grant revoked, an Agent relabelled, a
rollout release), so a Stack's counts follow its set of targets within the
coalescing window, whoever changed it. The mirror coalesces notifications for a few
milliseconds, recomputes the status of the affected Agents, Stacks and
AgentTargets, and patches only what people would see change (phase, state,
sequence, a new event) or, for heartbeat times, at a coarse throttle. Kopf
indexes map ids to resources; the handlers' timers are the safety net for
anything missed while not listening.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import kopf
import psycopg
import psycopg_pool

from ..config import GROUP, VERSION
from ..kube import CALL_ERRORS, Kube, NotFoundError, Ref
from ..logs import Episodes
from ..store import Store
from ..store.listen import AGENTS_CHANNEL, EVENTS_CHANNEL, STATE_CHANNEL, listen_forever
from ..tasks import forever
from .events import Stalls, announce_stall, post_event
from .agents import agent_status_patch
from .stacks import stack_status_patch
from .targets import agent_target_status_patch
from .status import newly_failed

log = logging.getLogger(__name__)

API_VERSION = f"{GROUP}/{VERSION}"
SELECTORS = "all"  # the one key of the selector_targets index
COALESCE_SECONDS = 0.05
TRANSIENT: tuple[type[BaseException], ...] = (psycopg.OperationalError, psycopg_pool.PoolTimeout, *CALL_ERRORS)


def first(index: Any, key: Any) -> Any:
    """The one value a Kopf index holds under `key`, or None."""
    try:
        for value in index[key]:
            return value
    except KeyError:
        return None
    return None


@dataclass
class Mirror:
    """One per operator; `run()` listens, `flush()` writes."""

    store: Store
    database_url: str
    kube: Callable[[], Any]
    metrics: Any
    config: Any
    stacks_by_uid: Any
    targets_by_stack: Any
    targets_by_agent: Any
    agents_by_uid: Any
    selector_targets: Any
    dirty_agents: dict[uuid.UUID, float] = field(default_factory=dict)
    # When an Agent's registration (labels, grants, existence) changed: selections may change. Heartbeats and
    # events never set it, so they do not re-evaluate every selector AgentTarget.
    selections_dirty_at: float | None = None
    dirty_stacks: dict[uuid.UUID, float] = field(default_factory=dict)
    dirty_target_refs: dict[tuple[str, str], float] = field(default_factory=dict)
    # Agents relabelled (agent, cluster): which overlays apply to them may have changed in their Stacks' status.
    relabelled: dict[tuple[str, str], float] = field(default_factory=dict)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    listening: bool = False
    outages: Episodes = field(default_factory=Episodes)
    # uid -> (when, the status as this process last wrote it): newer than Kopf's index until its watch catches up
    written: dict[str, tuple[float, dict[str, Any]]] = field(default_factory=dict)
    stalls: Stalls = field(default_factory=Stalls)

    async def run(self) -> None:
        """Listen and flush until cancelled; never raises otherwise."""
        flusher = asyncio.create_task(self._flush_forever(), name="status-mirror-flush")
        try:
            await self._listen_forever()
        finally:
            flusher.cancel()

    async def _listen_forever(self) -> None:
        await listen_forever(self.database_url, [AGENTS_CHANNEL, EVENTS_CHANNEL, STATE_CHANNEL], self._on_notify,
                             self._on_state, "status mirror")

    def _on_state(self, listening: bool) -> None:
        self.listening = listening

    async def _on_notify(self, channel: str, payload: str) -> None:
        self._note(channel, payload)

    def _note(self, channel: str, payload: str) -> None:
        if channel == STATE_CHANNEL:
            self._note_target_row(payload)
            return
        try:
            data = json.loads(payload)
            agent_id = uuid.UUID(data["agent_id"])
            at = float(data.get("at") or time.time())
        except (ValueError, KeyError, TypeError):
            return
        self.dirty_agents.setdefault(agent_id, at)
        if channel == EVENTS_CHANNEL and data.get("stack_id"):
            self.dirty_stacks.setdefault(uuid.UUID(data["stack_id"]), at)
        self.wake.set()

    def _note_target_row(self, payload: str) -> None:
        """A target row changed: its Stack's targets did. An agent relabelled (no stack named): the overlays that
        apply to it in each of its Stacks may have. (A bare stack id is a new version, which the Stack's own
        reconcile writes into its status already.)"""
        if not payload.startswith("{"):
            return
        try:
            data = json.loads(payload)
            stack_id = data.get("stack_id")
            if stack_id:
                self.note_stack(uuid.UUID(stack_id))
            elif data.get("agent") and data.get("cluster"):
                self.relabelled.setdefault((str(data["agent"]), str(data["cluster"])), time.time())
                self.wake.set()
        except (ValueError, TypeError, AttributeError):
            return

    async def _flush_forever(self) -> None:
        """Flush whenever something was noted; an outage is logged once and the resync timers catch up, and an
        unexpected error is `tasks.forever`'s to log, count and survive."""
        async def step() -> float:
            await self.wake.wait()
            await asyncio.sleep(COALESCE_SECONDS)
            self.wake.clear()
            try:
                await self.flush()
            except TRANSIENT as exc:
                if self.outages.starts("flush"):
                    log.warning("status mirror could not write status, the periodic resync will: %s", exc)
            return 0.0

        await forever("status mirror", step, 0.0, log, self.metrics.task_errors_total.labels("status-mirror").inc)

    async def flush(self) -> None:
        """Write the status of everything noted since the last flush."""
        agents, self.dirty_agents = self.dirty_agents, {}
        stacks, self.dirty_stacks = self.dirty_stacks, {}
        target_refs, self.dirty_target_refs = self.dirty_target_refs, {}
        selections_at, self.selections_dirty_at = self.selections_dirty_at, None
        relabelled, self.relabelled = self.relabelled, {}
        for (agent_name, cluster_name), at in relabelled.items():
            for stack_id in await self.store.stacks_of_agent(agent_name, cluster_name):
                stacks.setdefault(stack_id, at)
        if selections_at is not None:  # selector AgentTargets may gain or lose agents
            await self._mirror_targets(self.selector_targets, SELECTORS, selections_at)
        for stack_id, at in stacks.items():
            await self._mirror_stack(stack_id, at)
        for key, at in target_refs.items():
            await self._mirror_targets(self.targets_by_stack, key, at)
        for agent_id, at in agents.items():
            await self._mirror_agent(agent_id, at)

    def note_agent(self, agent_id: uuid.UUID) -> None:
        """Recompute an Agent's status and its AgentTargets' soon: its registration or grants changed."""
        now = time.time()
        self.dirty_agents.setdefault(agent_id, now)
        self.selections_dirty_at = self.selections_dirty_at or now
        self.wake.set()

    def note_stack(self, stack_id: uuid.UUID) -> None:
        """Recompute a Stack's status (and its AgentTargets') soon: its targets changed."""
        self.dirty_stacks.setdefault(stack_id, time.time())
        self.wake.set()

    def note_targets_of(self, namespace: str, stack_name: str) -> None:
        """Recompute the status of the AgentTargets naming this Stack soon: it appeared, changed or went."""
        self.dirty_target_refs.setdefault((namespace, stack_name), time.time())
        self.wake.set()

    def _previous(self, indexed: Mapping[str, Any]) -> Mapping[str, Any]:
        """The newest status this process knows for an indexed object: Kopf's snapshot, or what the mirror itself
        wrote after that snapshot was taken (the watch event of its own patch may not have arrived yet; comparing
        with the older snapshot would take a real change back to it for no change at all)."""
        written = self.written.get(indexed["uid"])
        if written is not None and written[0] > indexed["seen"]:
            return written[1]
        return indexed["status"]

    async def _patch_status(self, kind: str, indexed: Mapping[str, Any], status: dict[str, Any], at: float) -> None:
        try:
            await self.kube().merge_patch(Ref(API_VERSION, kind, indexed["name"], indexed["namespace"]),
                                          {"status": status}, "status")
        except NotFoundError:
            return  # deleted meanwhile
        self.written[indexed["uid"]] = (time.monotonic(), {**self._previous(indexed), **status})
        if len(self.written) > 100_000:  # bounded: the oldest are the least likely to matter
            for uid in sorted(self.written, key=lambda u: self.written[u][0])[:50_000]:
                del self.written[uid]
        self.metrics.status_patches_total.labels(kind).inc()
        self.metrics.status_mirror_lag_seconds.observe(max(0.0, time.time() - at))

    async def _mirror_stack(self, stack_id: uuid.UUID, at: float) -> None:
        indexed = first(self.stacks_by_uid, str(stack_id))
        if indexed is None:
            return
        previous = self._previous(indexed)
        status = await stack_status_patch(self.store, stack_id, previous)
        self.metrics.observe_stack(str(stack_id), status or previous)
        if status is not None:
            await self._patch_status("Stack", indexed, status, at)
            await report_failures(self.kube(), indexed["ref"], previous.get("agents"), status["agents"])
        await self._mirror_targets(self.targets_by_stack, (indexed["namespace"], indexed["name"]), at)

    async def _mirror_targets(self, index: Any, key: Any, at: float) -> None:
        try:
            targets = list(index[key])
        except KeyError:
            return
        for target in targets:
            previous = self._previous(target)
            status = await agent_target_status_patch(self.store, target["body"], previous)
            if status is not None:
                await self._patch_status("AgentTarget", target, status, at)
                await announce_stall(self.kube(), target["ref"], previous, status, self.stalls)

    async def _mirror_agent(self, agent_id: uuid.UUID, at: float) -> None:
        agent = await self.store.get_agent(agent_id)
        if agent is None:
            return
        indexed = first(self.agents_by_uid, str(agent_id))
        if indexed is not None:
            status = await agent_status_patch(self.store, agent_id, self._previous(indexed), self.config)
            if status is not None:
                await self._patch_status("Agent", indexed, status, at)
        await self._mirror_targets(self.targets_by_agent, (agent.name, agent.cluster_name), at)


async def report_failures(kube: Kube, ref: Mapping[str, Any], before: Any, after: list[dict[str, Any]]) -> None:
    """A Warning Event on the Stack for each agent that newly failed to apply (not once per heartbeat)."""
    for entry in newly_failed(before, after):
        await post_event(kube, ref, "Warning", "ApplyFailed",
                         f"agent {entry['agentName']} in cluster {entry['clusterName']} failed to apply"
                         f" sequence {entry.get('sequenceId')}: {entry['message']}")


def index_entry(body: Mapping[str, Any]) -> dict[str, Any]:
    """What the mirror's Kopf indexes keep of an object: where it is, its status as last seen, its spec."""
    meta = body["metadata"]
    return {
        "uid": meta["uid"],
        "seen": time.monotonic(),  # when the watch delivered this state (see Mirror._previous)
        "namespace": meta["namespace"],
        "name": meta["name"],
        "status": dict(body.get("status") or {}),
        "ref": {"apiVersion": body.get("apiVersion"), "kind": body.get("kind"),
                "metadata": {"uid": meta["uid"], "namespace": meta["namespace"], "name": meta["name"]}},
        "body": {"metadata": {"uid": meta["uid"], "namespace": meta["namespace"], "name": meta["name"],
                              "generation": meta.get("generation"),
                              "deletionTimestamp": meta.get("deletionTimestamp")},
                 "spec": dict(body.get("spec") or {})},
    }


def register_indexes(registry: kopf.OperatorRegistry) -> None:
    """Kopf indexes the mirror uses to find resources by id (kept current by Kopf's watches)."""

    @kopf.index(GROUP, VERSION, "stacks", id="stacks_by_uid", registry=registry)
    def stacks_by_uid(body: kopf.Body, uid: str, **_: Any) -> dict[str, Any]:
        return {uid: index_entry(body)}

    @kopf.index(GROUP, VERSION, "stacks", id="stacks_by_secret", registry=registry)
    def stacks_by_secret(body: kopf.Body, namespace: str | None, spec: kopf.Spec, **_: Any) -> dict[Any, Any]:
        refs = spec.get("secretRefs") or []
        names = {ref.get("name") for ref in refs if isinstance(ref, Mapping)} if isinstance(refs, list) else set()
        return {(namespace, name): index_entry(body) for name in names if isinstance(name, str)}

    @kopf.index(GROUP, VERSION, "agents", id="agents_by_uid", registry=registry)
    def agents_by_uid(body: kopf.Body, uid: str, **_: Any) -> dict[str, Any]:
        return {uid: index_entry(body)}

    @kopf.index(GROUP, VERSION, "agenttargets", id="targets_by_stack", registry=registry)
    def targets_by_stack(body: kopf.Body, namespace: str | None, spec: kopf.Spec, **_: Any) -> dict[Any, Any]:
        ref = (spec.get("stackRef") or {}).get("name")
        return {(namespace, ref): index_entry(body)} if isinstance(ref, str) else {}

    @kopf.index(GROUP, VERSION, "agenttargets", id="selector_targets", registry=registry)
    def selector_targets(body: kopf.Body, spec: kopf.Spec, **_: Any) -> dict[Any, Any]:
        return {SELECTORS: index_entry(body)} if spec.get("agentSelector") is not None else {}

    @kopf.index(GROUP, VERSION, "agenttargets", id="targets_by_agent", registry=registry)
    def targets_by_agent(body: kopf.Body, spec: kopf.Spec, **_: Any) -> dict[Any, Any]:
        agent, cluster = spec.get("agentName"), spec.get("clusterName")
        return {(agent, cluster): index_entry(body)} if isinstance(agent, str) and isinstance(cluster, str) else {}
