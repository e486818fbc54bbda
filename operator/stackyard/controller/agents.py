"""The Agent kind: registration, grants and keys, letting a deleted Agent go, and the one place its status is
computed and written.

Status fields: `agentId`, `pakSecretName`, `pakKeyId`, `pakRotation` (from the reconcile), `phase`,
`lastHeartbeat`, `heldStacks`, `lastEvent` (from heartbeats and events: `agent_heartbeat_status` for both the
reconcile and the timer), `conditions` and `observedGeneration`. What people see change: AGENT_KEYS, and
`lastHeartbeat` at a coarse throttle.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from .. import pak
from ..config import FIELD_MANAGER, GROUP, ROTATE_PAK_ANNOTATION, VERSION, OperatorConfig
from ..kube import Kube, Ref
from ..store import Agent, Conflict, Immutable, Store
from .conditions import Milestone, Result, conditions_for, ready_outcome, retrying_outcome, spec_of, uid_of
from .render import InvalidSpec, required_name, selector_query, validate_annotations, validate_labels, validate_namespaces
from .status import agent_phase, heartbeat_is_old, last_event_status, rfc3339, visible

log = logging.getLogger(__name__)
RELEASE_POLL = 1.0  # seconds between checks of a deleted Agent's agent (it heartbeats every 10 s)

AGENT_KEYS = ("phase", "lastEvent", "heldStacks")


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
    spec = spec_of(body)
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
        allowed |= await namespaces_matching(kube, namespace_selector, "spec.allowedNamespaceSelector")
    impersonate = await impersonation_rules(kube, spec.get("impersonate"))
    required = spec.get("impersonationRequired", False)
    if not isinstance(required, bool):
        raise InvalidSpec("InvalidSpec", "spec.impersonationRequired must be true or false")
    try:
        agent = await store.register_agent(uid_of(body), agent_name, cluster_name, labels, annotations,
                                           meta["namespace"], sorted(allowed - {meta["namespace"]}),
                                           meta.get("labels") or {}, impersonate, required)
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


async def namespaces_matching(kube: Kube, selector: Any, where: str) -> set[str]:
    """Names of the management namespaces a label selector picks (needs `list namespaces`)."""
    query = selector_query(selector, where)
    return {ns["metadata"]["name"] for ns in await kube.list("v1", "Namespace", label_selector=query)}


async def impersonation_rules(kube: Kube, entries: Any) -> list[dict[str, Any]]:
    """`spec.impersonate` with its selectors resolved to namespace names, in order, as the store keeps it
    (`stackyard_apply_as`, migration 0014), or InvalidSpec naming the entry."""
    if entries is None:
        return []
    if not isinstance(entries, list):
        raise InvalidSpec("InvalidSpec", "spec.impersonate must be a list")
    rules = []
    for index, entry in enumerate(entries):
        where = f"spec.impersonate[{index}]"
        if not isinstance(entry, Mapping):
            raise InvalidSpec("InvalidSpec", f"{where} must be an object with namespaces and serviceAccount")
        names = set(validate_namespaces(entry.get("namespaces"), f"{where}.namespaces"))
        if entry.get("namespaceSelector") is not None:
            names |= await namespaces_matching(kube, entry["namespaceSelector"], f"{where}.namespaceSelector")
        account = entry.get("serviceAccount")
        if not isinstance(account, Mapping):
            raise InvalidSpec("InvalidSpec", f"{where}.serviceAccount needs namespace and name")
        rules.append({"namespaces": sorted(names), "serviceAccount": {
            "namespace": required_name(account.get("namespace"), f"{where}.serviceAccount.namespace"),
            "name": required_name(account.get("name"), f"{where}.serviceAccount.name")}})
    return rules


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


async def wait_for_release(store: Store, kube: Kube, config: OperatorConfig, body: Mapping[str, Any]) -> AgentRelease:
    """Mark the agent as being deleted and poll the store until `agent_release` lets it go, showing why in the
    Agent's status meanwhile (a Ready=False/Deleting condition, written once per message)."""
    agent_id, shown = uid_of(body), ""
    meta = body["metadata"]
    while True:
        agent = await store.begin_agent_deletion(agent_id)
        decision = agent_release(agent, datetime.now(timezone.utc), config.stale_after, config.agent_deletion_timeout)
        if decision.done:
            return decision
        if decision.message != shown:
            shown = decision.message
            log.info("Agent %s/%s is being deleted: %s", meta["namespace"], meta["name"], decision.message)
            outcome = retrying_outcome("Deleting", decision.message, ready="False")
            conditions = conditions_for(outcome, meta.get("generation"), (body.get("status") or {}).get("conditions"))
            await kube.merge_patch(Ref(f"{GROUP}/{VERSION}", "Agent", meta["name"], meta["namespace"]),
                                   {"status": {"conditions": conditions}}, "status")
        await asyncio.sleep(RELEASE_POLL)


async def delete_agent(store: Store, body: Mapping[str, Any]) -> None:
    """Soft-delete the agent (its events follow; its key stops working); the PAK Secret goes with the Agent by
    owner reference."""
    await store.soft_delete_agent(uid_of(body))


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
