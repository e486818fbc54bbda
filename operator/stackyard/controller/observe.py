"""One status path per kind: what a resource's status should show now, and the patch when people would see a change.

The reconcile handlers, the resync timers and the status mirror all call these,
so the rules for "visibly changed" live in one place (docs/architecture.md, "Status").
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from ..config import OperatorConfig
from ..store import Store
from .conditions import conditions_for, now_rfc3339, stalled_outcome
from .reconcile import (
    Result,
    agent_heartbeat_status,
    observe_agent_target,
    reconcile_agent_target,
    stack_target_status,
)
from .render import InvalidSpec
from .rollout import advance
from .status import heartbeat_is_old, last_event_status, visible

STACK_KEYS = ("targets", "agents", "rollout", "conditions")
# Everything the operator writes in a Stack's status (what a full resync compares and restores).
STACK_STATUS_KEYS = ("stackId", "deploymentObject", *STACK_KEYS, "observedGeneration")
TARGET_KEYS = ("targetId", "stackId", "agent", "deployment", "selectedAgents", "agents", "health", "unhealthy",
               "conditions")
AGENT_KEYS = ("phase", "lastEvent", "heldStacks")


def with_outcome(result: Result, generation: int | None, previous: Mapping[str, Any]) -> dict[str, Any]:
    """A result's status fields plus its conditions and observedGeneration."""
    status = dict(result.status)
    status["conditions"] = conditions_for(result.outcome, generation,
                                          result.status.get("conditions") or previous.get("conditions"))
    if generation is not None:
        status["observedGeneration"] = generation
    return status


# Stalled for a reason that a change elsewhere can fix: an Agent that later grants the namespace.
FIXABLE_ELSEWHERE = frozenset({"AgentNotPermitted"})


def is_stalled(previous: Mapping[str, Any], generation: int | None) -> bool:
    """True when the handler declared this generation Stalled and only a spec change moves it on."""
    return previous.get("observedGeneration") == generation and any(
        c.get("type") == "Stalled" and c.get("status") == "True" and c.get("reason") not in FIXABLE_ELSEWHERE
        for c in previous.get("conditions") or ()
    )


async def stack_status_patch(store: Store, stack_id: uuid.UUID, previous: Mapping[str, Any]) -> dict[str, Any] | None:
    """The Stack's `targets`, `agents`, `rollout` and conditions when they visibly differ from `previous`, else None.

    First releases the latest version to more agents when the rollout allows it (their health changed).
    """
    policy = await store.stack_rollout(stack_id)
    if policy is not None:
        await advance(store, stack_id)
    latest = await store.latest_deployment_object(stack_id)
    status = await stack_target_status(store, stack_id, latest, previous, now_rfc3339(), policy)
    return status if visible(status, STACK_KEYS) != visible(previous, STACK_KEYS) else None


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


async def agent_status_patch(
    store: Store, agent_id: uuid.UUID, previous: Mapping[str, Any], config: OperatorConfig
) -> dict[str, Any] | None:
    """The Agent's phase, heartbeat and last event when visibly changed (heartbeat times at a coarse throttle)."""
    agent = await store.get_agent(agent_id)
    if agent is None:
        return None
    status = agent_heartbeat_status(agent.last_heartbeat, config, agent.held_stacks)
    event = await store.last_event(agent_id)
    if event is not None:
        status["lastEvent"] = last_event_status(event)
    if visible(status, AGENT_KEYS) != visible(previous, AGENT_KEYS) or heartbeat_is_old(
        previous, status, config.status_throttle
    ):
        return status
    return None
