"""What reconciling each kind means, over the store and the Kubernetes client.

Each function takes the object's body and returns an Outcome plus the status
fields to write; it raises InvalidSpec for input that retrying cannot fix and
lets transient errors (database or API server unavailable) propagate to be
retried. A missing dependency (an AgentTarget's Stack) is an outcome, not an
error: the object waits with Ready=False until the dependency's own reconcile
brings it forward (see docs/architecture.md, "Status").
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from .. import pak
from ..protocol import HEALTH_DEGRADED, HEALTH_HEALTHY, HEALTH_PROGRESSING, HEALTH_UNKNOWN
from ..config import FIELD_MANAGER, GROUP, ROTATE_PAK_ANNOTATION, VERSION, OperatorConfig
from ..kube import Kube
from ..store import Agent, Conflict, Immutable, NotPermitted, Store, sha256_hex
from .conditions import Outcome, now_rfc3339, ready_outcome, retrying_outcome, set_condition
from .render import (
    InvalidSpec,
    render_stack,
    required_name,
    selector_matches,
    selector_query,
    validate_annotations,
    validate_labels,
    validate_namespaces,
)
from .rollout import RolloutView, advance, parse_rollout, unhealthy_message
from .rollout import view as rollout_view
from .status import (
    agent_phase,
    apply_failure,
    drift_status,
    agent_target_agent_status,
    agents_status,
    deployment_object_status,
    first_problem,
    health_of,
    healthy_condition,
    last_event_status,
    rfc3339,
    target_state,
)


@dataclass(frozen=True)
class Milestone:
    """A Normal Kubernetes Event worth posting: something a person would want in `kubectl describe`."""

    reason: str
    message: str


@dataclass(frozen=True)
class Result:
    outcome: Outcome
    status: dict[str, Any]
    milestones: tuple[Milestone, ...] = ()
    # Observing found a state only a write settles (an AgentTarget whose Stack exists but has no row for it).
    needs_write: bool = False


def _uid(body: Mapping[str, Any]) -> uuid.UUID:
    return uuid.UUID(body["metadata"]["uid"])


def _spec(body: Mapping[str, Any]) -> Mapping[str, Any]:
    spec = body.get("spec")
    if not isinstance(spec, Mapping):
        raise InvalidSpec("InvalidSpec", "spec is required and must be an object")
    return spec


def stack_row_name(namespace: str, name: str) -> str:
    """`stacks.name` of a Stack resource."""
    return f"{namespace}/{name}"


# Stack --------------------------------------------------------------------------------


def _stack_spec(body: Mapping[str, Any]) -> tuple[str | None, list[str], dict[str, str], str, int,
                                                 Mapping[str, Any] | None]:
    """(description, labels, annotations, canonical YAML, resource count, rollout policy) of a Stack's spec, or
    InvalidSpec naming what is wrong."""
    spec = _spec(body)
    description = spec.get("description")
    if description is not None and not isinstance(description, str):
        raise InvalidSpec("InvalidSpec", "spec.description must be a string")
    labels = validate_labels(spec.get("labels"), "spec.labels")
    annotations = validate_annotations(spec.get("annotations"), "spec.annotations")
    content, count = render_stack(spec)
    return description, labels, annotations, content, count, parse_rollout(spec)


async def reconcile_stack(store: Store, body: Mapping[str, Any], now: str) -> tuple[Result, bool]:
    """Upsert the stack and emit a deployment object when its content changed; returns (result, emitted)."""
    meta = body["metadata"]
    description, labels, annotations, content, count, rollout = _stack_spec(body)
    stack_id = _uid(body)
    try:
        emitted = await store.save_stack(
            stack_id, stack_row_name(meta["namespace"], meta["name"]), description, labels, annotations, content,
            rollout,
        )
    except Conflict as exc:
        raise InvalidSpec("StackDeleted", str(exc)) from exc
    if rollout is not None:
        await advance(store, stack_id)
    do = emitted.deployment_object
    status = await stack_target_status(store, stack_id, do, body.get("status") or {}, now, rollout)
    status["stackId"] = str(stack_id)
    status["deploymentObject"] = deployment_object_status(do, count)
    outcome = ready_outcome(f"sequence {do.sequence_id} stored ({count} resources)")
    milestones = (Milestone("Emitted", f"deployment object sequence {do.sequence_id} emitted ({count} resources)"),)
    return Result(outcome, status, milestones if emitted.created else ()), emitted.created


async def observe_stack(store: Store, body: Mapping[str, Any], now: str) -> Result:
    """The outcome and status a Stack should show now, reading only; `needs_write` when the store does not hold
    what its spec renders to (a change no handler has stored yet).

    Everything comes from the spec and the store, keyed by the object's uid: nothing is read back from the
    status, which anyone allowed to write `stacks/status` could have forged.
    """
    _description, _labels, _annotations, content, count, rollout = _stack_spec(body)
    stack_id = _uid(body)
    latest = await store.latest_deployment_object(stack_id)
    stored_policy = await store.stack_rollout(stack_id)
    if latest is None or latest.is_deletion_marker or latest.yaml_checksum != sha256_hex(content) or (
            stored_policy != rollout):
        return Result(retrying_outcome("Reconciling", "the spec is not stored yet"), {}, needs_write=True)
    status = await stack_target_status(store, stack_id, latest, body.get("status") or {}, now, rollout)
    status["stackId"] = str(stack_id)
    status["deploymentObject"] = deployment_object_status(latest, count)
    return Result(ready_outcome(f"sequence {latest.sequence_id} stored ({count} resources)"), status)


async def stack_target_status(
    store: Store, stack_id: uuid.UUID, latest: Any, previous_status: Mapping[str, Any], now: str,
    policy: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """`targets` and `agents` of a Stack's status from its targets and their agents' events."""
    rows = await store.target_rows(stack_id)
    counts, entries = agents_status(latest, rows, previous_status.get("agents"), now)
    status: dict[str, Any] = {"targets": counts, "agents": entries}
    conditions = set_condition(previous_status.get("conditions"), "Healthy", *healthy_condition(latest, rows), now)
    rollout = rollout_view(policy, latest, rows)
    if rollout is None:
        status["rollout"] = None
        conditions = set_condition(conditions, "RolloutHalted", None)
    else:
        status["rollout"] = rollout.status()
        conditions = set_condition(conditions, "RolloutHalted", *rollout_halted(rollout), now)
    status["conditions"] = conditions
    return status


def overall_health(healths: list[str]) -> str:
    """One health for several agents: Degraded if any is, Healthy if all are, else Progressing (Unknown: none)."""
    if not healths:
        return HEALTH_UNKNOWN
    if HEALTH_DEGRADED in healths:
        return HEALTH_DEGRADED
    if all(h == HEALTH_HEALTHY for h in healths):
        return HEALTH_HEALTHY
    return HEALTH_PROGRESSING


def rollout_halted(rollout: RolloutView) -> tuple[str, str, str]:
    """(status, reason, message) of a Stack's RolloutHalted condition."""
    progress = f"sequence {rollout.sequence_id} released to {rollout.released}/{rollout.total} agents," \
               f" {rollout.healthy} healthy"
    if rollout.halted_by is not None:
        row = rollout.halted_by
        return "True", "AgentDegraded", (f"agent {row.agent_name} in cluster {row.cluster_name} is Degraded on"
                                         f" sequence {rollout.sequence_id} ({unhealthy_message(row)}); {progress}")
    if rollout.paused:
        return "True", "Paused", f"spec.rollout.pause is true; {progress}"
    if rollout.released == rollout.total:
        return "False", "Released", progress
    return "False", "RollingOut", progress


async def delete_stack(store: Store, body: Mapping[str, Any]) -> None:
    """Soft-delete: the database emits the deletion marker that the targets carry to the agents."""
    await store.soft_delete_stack(_uid(body))


# AgentTarget ----------------------------------------------------------------------------


@dataclass(frozen=True)
class TargetSpec:
    """An AgentTarget's spec: the Stack, and either one named agent or a label selector over Agents."""

    namespace: str
    stack_name: str
    agent: tuple[str, str] | None  # (agent name, cluster name)
    selector: Mapping[str, Any] | None


def _target_spec(body: Mapping[str, Any]) -> TargetSpec:
    """The AgentTarget's spec, or InvalidSpec naming what is wrong."""
    spec = _spec(body)
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
    owned = {(s, a, c) for s, a, c in await store.owned_targets(_uid(body))}
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
        await store.set_agent_targets(_uid(body), stack_id, await selected_agents(store, target), target.namespace)
    except NotPermitted as exc:
        # Nothing is bound now: what the status said about the binding (delivery, health) is no longer true.
        cleared = {"targetId": None, "deployment": None, "health": None, "unhealthy": None, "agents": None,
                   "agent": agent_target_agent_status(None) if target.agent is not None else None}
        raise InvalidSpec("AgentNotPermitted", str(exc), cleared) from exc
    return await observe_agent_target(store, body)


async def delete_agent_target(store: Store, body: Mapping[str, Any]) -> None:
    await store.remove_agent_targets(_uid(body))


# Agent ------------------------------------------------------------------------------------


MAX_NAME_LENGTH = 253  # of a Kubernetes object name (a DNS subdomain)


def pak_secret_name(agent_resource_name: str) -> str:
    return f"{agent_resource_name}-pak"


def pak_secret(body: Mapping[str, Any], token: str) -> dict[str, Any]:
    """The Secret that carries an agent's key, owned by the Agent so it goes with it."""
    meta = body["metadata"]
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": pak_secret_name(meta["name"]),
            "namespace": meta["namespace"],
            # A label value holds at most 63 characters and an Agent's name up to 249: the name goes in an
            # annotation, the uid (36 characters) in the label that selects the Secrets of one Agent.
            "labels": {"app.kubernetes.io/managed-by": "stackyard", "stackyard.dev/agent-uid": meta["uid"]},
            "annotations": {"stackyard.dev/agent": meta["name"]},
            "ownerReferences": [
                {
                    "apiVersion": f"{GROUP}/{VERSION}",
                    "kind": "Agent",
                    "name": meta["name"],
                    "uid": meta["uid"],
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "data": {"pak": base64.b64encode(token.encode()).decode()},
    }


async def reconcile_agent(store: Store, kube: Kube, config: OperatorConfig, body: Mapping[str, Any]) -> Result:
    """Register the agent row and issue its PAK (see below for when)."""
    spec = _spec(body)
    meta = body["metadata"]
    if len(pak_secret_name(meta["name"])) > MAX_NAME_LENGTH:
        raise InvalidSpec("NameTooLong", f"metadata.name leaves no room for the Secret {pak_secret_name('<name>')!r}:"
                                         f" use at most {MAX_NAME_LENGTH - len(pak_secret_name(''))} characters")
    agent_name = required_name(spec.get("agentName") or meta["name"], "spec.agentName")
    cluster_name = required_name(spec.get("clusterName"), "spec.clusterName")
    labels = validate_labels(spec.get("labels"), "spec.labels")
    annotations = validate_annotations(spec.get("annotations"), "spec.annotations")
    allowed = set(validate_namespaces(spec.get("allowedNamespaces"), "spec.allowedNamespaces"))
    namespace_selector = spec.get("allowedNamespaceSelector")
    if namespace_selector is not None:
        query = selector_query(namespace_selector, "spec.allowedNamespaceSelector")
        allowed |= {ns["metadata"]["name"] for ns in await kube.list("v1", "Namespace", label_selector=query)}
    try:
        agent = await store.register_agent(_uid(body), agent_name, cluster_name, labels, annotations,
                                           meta["namespace"], sorted(allowed - {meta["namespace"]}),
                                           meta.get("labels") or {})
    except Conflict as exc:
        raise InvalidSpec("AgentNameConflict", str(exc)) from exc
    except Immutable as exc:
        raise InvalidSpec("AgentNameImmutable", str(exc)) from exc
    previous = body.get("status") or {}
    rotation = (meta.get("annotations") or {}).get(ROTATE_PAK_ANNOTATION)
    rotate = rotation is not None and rotation != previous.get("pakRotation")
    key_id = agent.pak_key_id  # the store's, not the status's: a status can be written by others
    issued = False
    if rotate or not key_id or not agent.pak_hash:
        # The operator never reads Secrets (RBAC grants create and patch only): it issues a key when
        # it has not issued one yet, when the store lost the hash, or when a rotation is asked for.
        key = pak.generate()
        await store.set_agent_pak_hash(agent.id, key.secret_hash, key.key_id)
        await kube.apply(pak_secret(body, key.token), FIELD_MANAGER)
        key_id, issued = key.key_id, True
    status: dict[str, Any] = {
        "agentId": str(agent.id),
        "pakSecretName": pak_secret_name(meta["name"]),
        "pakKeyId": key_id,
        **agent_heartbeat_status(agent.last_heartbeat, config, agent.held_stacks),
    }
    if rotation is not None:
        status["pakRotation"] = rotation
    event = await store.last_event(agent.id)
    if event is not None:
        status["lastEvent"] = last_event_status(event)
    message = f"registered as {agent_name} in cluster {cluster_name}" + ("; API key issued" if issued else "")
    milestones: tuple[Milestone, ...] = ()
    if issued:
        what = "rotated: the previous key no longer works" if rotate else "issued"
        milestones = (Milestone("KeyRotated" if rotate else "KeyIssued",
                                f"API key {key_id} {what}; Secret {pak_secret_name(meta['name'])}"),)
    return Result(ready_outcome(message), status, milestones)


def agent_heartbeat_status(last_heartbeat: datetime | None, config: OperatorConfig,
                           held_stacks: int | None = None) -> dict[str, Any]:
    """An Agent's `phase`, `lastHeartbeat` and `heldStacks` (the stacks its agent holds in its cluster)."""
    status: dict[str, Any] = {
        "phase": agent_phase(last_heartbeat, datetime.now(timezone.utc), config.stale_after)
    }
    if last_heartbeat is not None:
        status["lastHeartbeat"] = rfc3339(last_heartbeat)
    if held_stacks is not None:
        status["heldStacks"] = held_stacks
    return status


@dataclass(frozen=True)
class AgentRelease:
    """Whether a deleted Agent may go now (its key revoked), and what to say about it."""

    done: bool
    message: str
    left_behind: bool = False  # let go without the agent confirming it removed what it held


def agent_release(agent: Agent | None, now: datetime, stale_after: float, timeout: float) -> AgentRelease:
    """The rule for letting a deleted Agent go (docs/architecture.md, "Deleting an Agent"), pure.

    Its desired state became empty when the deletion began, so a live agent removes what it holds and says so
    in a heartbeat (`heldStacks: 0`) sent after that moment; an agent that never connected holds nothing; one
    that is Stale, or still holds something after `timeout`, is let go with what it holds left behind.
    """
    if agent is None or agent.deleting_since is None:
        return AgentRelease(True, "not registered")
    where = f"agent {agent.name} in cluster {agent.cluster_name}"
    if agent.last_heartbeat is None:
        return AgentRelease(True, f"{where} never connected: it holds nothing")
    if agent.last_heartbeat > agent.deleting_since and agent.held_stacks == 0:
        return AgentRelease(True, f"{where} removed everything it held")
    held = f"{agent.held_stacks} stacks" if agent.held_stacks is not None else "what it holds"
    cleanup = (f"; their objects stay in cluster {agent.cluster_name} (remove them there: they carry the label"
               " stackyard.dev/stack=<stack id>, and inventory ConfigMaps labelled stackyard.dev/inventory=true"
               " list them)")
    if (now - agent.last_heartbeat).total_seconds() > stale_after:
        return AgentRelease(True, f"{where} is not heartbeating and may still hold {held}{cleanup}", True)
    waited = (now - agent.deleting_since).total_seconds()
    if waited >= timeout:
        return AgentRelease(True, f"{where} still holds {held} after {timeout:.0f}s{cleanup}", True)
    until = rfc3339(agent.deleting_since + timedelta(seconds=timeout))
    return AgentRelease(False, f"waiting for {where} to remove {held} before its key is revoked (until {until})")


async def delete_agent(store: Store, body: Mapping[str, Any]) -> None:
    """Soft-delete the agent (its events follow; its key stops working); the PAK Secret goes with the Agent by
    owner reference."""
    await store.soft_delete_agent(_uid(body))
