"""The AgentTarget kind: binding target rows, and the one place its status is computed and written.

Status fields: `stackId`, `targetId`, `selectedAgents`, `health`, and either `agent`, `deployment` and
`unhealthy` (a named agent) or `agents` (a selector), plus `conditions` and `observedGeneration`. All conditions
come from the outcome. What people see change: TARGET_KEYS. Only the status path writes in one case: a Stack
that appeared after the AgentTarget's reconcile gets its rows bound (`needs_write`).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..protocol import HEALTH_UNKNOWN
from ..store import NotPermitted, Store
from .conditions import Result, now_rfc3339, ready_outcome, retrying_outcome, spec_of, stalled_outcome, uid_of, with_outcome
from ..selectors import selector_matches
from .render import InvalidSpec, required_name, selector_query
from .stacks import stack_row_name
from .status import (
    agent_target_agent_status,
    agents_status,
    apply_failure,
    drift_status,
    first_problem,
    health_of,
    overall_health,
    rfc3339,
    target_state,
    visible,
)

TARGET_KEYS = ("targetId", "stackId", "agent", "deployment", "selectedAgents", "agents", "health", "unhealthy",
               "conditions")


# Stalled for a reason that a change elsewhere can fix: an Agent that later grants the namespace.
FIXABLE_ELSEWHERE = frozenset({"AgentNotPermitted"})


@dataclass(frozen=True)
class TargetSpec:
    """An AgentTarget's spec: the Stack, and either one named agent or a label selector over Agents."""

    namespace: str
    stack_name: str
    agent: tuple[str, str] | None  # (agent name, cluster name)
    selector: Mapping[str, Any] | None


def _target_spec(body: Mapping[str, Any]) -> TargetSpec:
    """The AgentTarget's spec, or InvalidSpec naming what is wrong."""
    spec = spec_of(body)
    stack_ref = spec.get("stackRef")
    if not isinstance(stack_ref, Mapping):
        raise InvalidSpec("InvalidSpec", "spec.stackRef.name is required")
    stack_name = required_name(stack_ref.get("name"), "spec.stackRef.name")
    named = spec.get("agentName") is not None or spec.get("clusterName") is not None
    selector = spec.get("agentSelector")
    if named == (selector is not None):
        raise InvalidSpec("InvalidSpec", "give either spec.agentName and spec.clusterName, or spec.agentSelector")
    if selector is not None:
        selector_query(selector, "spec.agentSelector")  # validates
        return TargetSpec(body["metadata"]["namespace"], stack_name, None, selector)
    agent = (required_name(spec.get("agentName"), "spec.agentName"),
             required_name(spec.get("clusterName"), "spec.clusterName"))
    return TargetSpec(body["metadata"]["namespace"], stack_name, agent, None)


async def selected_agents(store: Store, target: TargetSpec) -> list[tuple[str, str]]:
    """The (agent, cluster) pairs an AgentTarget binds: its named agent, or the permitted Agents its selector picks."""
    if target.agent is not None:
        return [target.agent]
    assert target.selector is not None
    return [(name, cluster) for name, cluster, labels in await store.permitted_agents(target.namespace)
            if selector_matches(target.selector, labels)]


async def target_status(store: Store, namespace: str, stack_id: uuid.UUID, agent_name: str, cluster_name: str
                        ) -> dict[str, Any]:
    """`stackId`, `targetId`, `agent` and `deployment` of a named AgentTarget's status (reads only)."""
    agent = await store.agent_visible_to(namespace, agent_name, cluster_name)
    status: dict[str, Any] = {"stackId": str(stack_id), "targetId": None, "agent": agent_target_agent_status(agent),
                              "deployment": None, "health": HEALTH_UNKNOWN, "unhealthy": None}
    latest = await store.latest_deployment_object(stack_id)
    rows = await store.target_rows(stack_id, agent_name, cluster_name)
    if rows:
        state, sequence_id, message = target_state(latest, rows[0])
        deployment: dict[str, Any] = {"state": state, "message": message}
        if sequence_id is not None:
            deployment["sequenceId"] = sequence_id
        if rows[0].event_time is not None:
            deployment["lastEventTime"] = rfc3339(rows[0].event_time)
        status["deployment"] = deployment
        status["targetId"] = str(rows[0].target_id)
        health, unhealthy = health_of(rows[0], sequence_id, apply_failure(latest, rows[0]))
        if rows[0].drift_time is not None:
            deployment["lastDrift"] = drift_status(rows[0])
        status["health"], status["unhealthy"] = health, unhealthy or None
        if unhealthy:
            deployment["healthMessage"] = first_problem(unhealthy)
    return status


async def observe_agent_target(store: Store, body: Mapping[str, Any]) -> Result:
    """The outcome and status an AgentTarget should show now, without writing anything.

    Keys set to None are cleared by the merge patch (a Stack that is gone leaves
    no stale deployment state behind). `needs_write` is set when the rows do not
    match what the spec selects (a Stack or Agent that appeared, left or was relabelled).
    """
    target = _target_spec(body)
    stack_id = await store.live_stack_id(stack_row_name(target.namespace, target.stack_name))
    selected = await selected_agents(store, target)
    owned = {(s, a, c) for s, a, c in await store.owned_targets(uid_of(body))}
    if stack_id is None:
        status: dict[str, Any] = {"targetId": None, "stackId": None, "deployment": None, "agents": None,
                                  "selectedAgents": len(selected), "agent": None, "health": None, "unhealthy": None}
        if target.agent is not None:
            status["agent"] = agent_target_agent_status(await store.agent_visible_to(target.namespace, *target.agent))
        message = f"Stack {target.namespace}/{target.stack_name} does not exist; waiting for it"
        return Result(retrying_outcome("StackNotFound", message, ready="False"), status, needs_write=bool(owned))
    rows = await store.target_rows(stack_id)
    bound = {(r.agent_name, r.cluster_name) for r in rows}
    stale = {(a, c) for s, a, c in owned if s != stack_id or (a, c) not in set(selected)}
    unbound = [pair for pair in selected if pair not in bound]
    if target.agent is not None:
        agent_name, cluster_name = target.agent
        status = {"selectedAgents": 1, "agents": None,
                  **await target_status(store, target.namespace, stack_id, agent_name, cluster_name)}
        registered = "registered" if status["agent"]["registered"] else "not registered yet"
        message = f"targets agent {agent_name} in cluster {cluster_name} ({registered})"
    else:
        latest = await store.latest_deployment_object(stack_id)
        _counts, entries = agents_status(latest, [r for r in rows if (r.agent_name, r.cluster_name) in set(selected)],
                                         (body.get("status") or {}).get("agents"), now_rfc3339())
        status = {"stackId": str(stack_id), "targetId": None, "agent": None, "deployment": None,
                  "selectedAgents": len(selected), "agents": entries,
                  "health": overall_health([e["health"] for e in entries]), "unhealthy": None}
        message = f"selects {len(selected)} agents"
    if unbound or stale:
        return Result(retrying_outcome("Binding", f"binding to Stack {target.namespace}/{target.stack_name}"), status,
                      needs_write=True)
    return Result(ready_outcome(message), status)


async def reconcile_agent_target(store: Store, body: Mapping[str, Any]) -> Result:
    """Make the target rows match what the spec selects and report the status."""
    target = _target_spec(body)
    stack_id = await store.live_stack_id(stack_row_name(target.namespace, target.stack_name))
    try:
        await store.set_agent_targets(uid_of(body), stack_id, await selected_agents(store, target), target.namespace)
    except NotPermitted as exc:
        # Nothing is bound now: what the status said about the binding (delivery, health) is no longer true.
        cleared = {"targetId": None, "deployment": None, "health": None, "unhealthy": None, "agents": None,
                   "agent": agent_target_agent_status(None) if target.agent is not None else None}
        raise InvalidSpec("AgentNotPermitted", str(exc), cleared) from exc
    return await observe_agent_target(store, body)


async def delete_agent_target(store: Store, body: Mapping[str, Any]) -> None:
    await store.remove_agent_targets(uid_of(body))


def is_stalled(previous: Mapping[str, Any], generation: int | None) -> bool:
    """True when the handler declared this generation Stalled and only a spec change moves it on."""
    return previous.get("observedGeneration") == generation and any(
        c.get("type") == "Stalled" and c.get("status") == "True" and c.get("reason") not in FIXABLE_ELSEWHERE
        for c in previous.get("conditions") or ()
    )


async def agent_target_status_patch(
    store: Store, body: Mapping[str, Any], previous: Mapping[str, Any]
) -> dict[str, Any] | None:
    """The AgentTarget's status when it visibly differs from `previous`, else None (also when Stalled).

    Writes only to bind an AgentTarget to a Stack that appeared after its reconcile; never in the steady state.
    """
    generation = (body.get("metadata") or {}).get("generation")
    if (body.get("metadata") or {}).get("deletionTimestamp"):
        return None  # being deleted: its handler removes its rows, and nothing may bind them again
    if is_stalled(previous, generation):
        return None
    try:
        result = await observe_agent_target(store, body)
    except InvalidSpec:
        return None  # a spec-level problem is the handler's business
    if result.needs_write:
        # The Stack appeared (or was re-created) after the AgentTarget's own reconcile: bind it now.
        try:
            result = await reconcile_agent_target(store, body)
        except InvalidSpec as exc:
            result = Result(stalled_outcome(exc.reason, exc.message), exc.status)
    status = with_outcome(result, generation, previous)
    return status if visible(status, TARGET_KEYS) != visible(previous, TARGET_KEYS) else None
