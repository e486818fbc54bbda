"""The Stack kind: reconciling a Stack into the store, and the one place its status is computed and written.

Status fields: `stackId`, `deploymentObject` (from the reconcile), `targets`, `agents`, `rollout` (from the
targets' rows), `conditions` and `observedGeneration`. Conditions: Ready, Reconciling and Stalled belong to the
reconcile outcome (`conditions_for`); Healthy and RolloutHalted to the status path (`stack_target_status`).
What people see change: STACK_KEYS (the mirror's patches), STACK_STATUS_KEYS (a full resync); `visible`
ignores times that move by themselves.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..encryption import Keyring
from ..store import Conflict, Content, DeploymentObject, Store
from .conditions import Milestone, Outcome, Result, ready_outcome, retrying_outcome, set_condition, spec_of, uid_of
from .render import InvalidSpec, render_stack, validate_annotations, validate_labels, validate_resources
from .overlays import validate_overlays
from .secrets import SecretReader, inline_secrets, secret_refs, sealed, shipped_secrets
from .rollout import RolloutView, advance, parse_rollout
from .rollout import view as rollout_view
from .rollout import unhealthy_message
from .status import agents_status, deployment_object_status, healthy_condition, visible
from .conditions import now_rfc3339

INLINE_SECRETS = "InlineSecretData"  # Ready's reason when Secret data is written into spec.resources

STACK_KEYS = ("targets", "agents", "rollout", "conditions")


# Everything the operator writes in a Stack's status (what a full resync compares and restores).
STACK_STATUS_KEYS = ("stackId", "deploymentObject", *STACK_KEYS, "observedGeneration")


def stack_row_name(namespace: str, name: str) -> str:
    """`stacks.name` of a Stack resource."""
    return f"{namespace}/{name}"


@dataclass(frozen=True)
class StackContent:
    """What a Stack's spec stands for: the stack row's fields, what the deployment object stores, the policy."""

    description: str | None
    labels: list[str]
    annotations: dict[str, str]
    content: Content
    count: int
    rollout: Mapping[str, Any] | None
    inline_secrets: list[str]


async def stack_content(body: Mapping[str, Any], read: SecretReader, keyring: Keyring | None,
                        latest: DeploymentObject | None) -> StackContent:
    """The Stack's spec rendered (with the Secrets it references) and sealed, or InvalidSpec naming what is wrong."""
    spec = spec_of(body)
    description = spec.get("description")
    if description is not None and not isinstance(description, str):
        raise InvalidSpec("InvalidSpec", "spec.description must be a string")
    labels = validate_labels(spec.get("labels"), "spec.labels")
    annotations = validate_annotations(spec.get("annotations"), "spec.annotations")
    refs = secret_refs(spec)
    rollout = parse_rollout(spec)
    resources = validate_resources(spec.get("resources"))  # the spec's own faults first, before Secrets are read
    overlays = validate_overlays(spec, resources)
    shipped = await shipped_secrets(read, body["metadata"]["namespace"], refs) if refs else []
    content, count = render_stack(spec, shipped)
    return StackContent(description, labels, annotations, sealed(keyring, content, latest, overlays), count, rollout,
                        inline_secrets(spec.get("resources")))


def ready(latest: DeploymentObject, found: StackContent) -> Outcome:
    """Ready: the version is stored. With Secret data written into spec.resources, the reason says so."""
    stored = f"sequence {latest.sequence_id} stored ({found.count} resources)"
    if found.inline_secrets:
        return ready_outcome(f"{stored}; Secret data written inline ({', '.join(found.inline_secrets[:5])}) is"
                             " readable by anyone who may get this Stack: move it to a Secret of this namespace and"
                             " list it in spec.secretRefs", reason=INLINE_SECRETS)
    return ready_outcome(stored)


async def reconcile_stack(store: Store, body: Mapping[str, Any], now: str, read: SecretReader,
                          keyring: Keyring | None = None) -> tuple[Result, bool]:
    """Upsert the stack and emit a deployment object when its content changed; returns (result, emitted)."""
    meta = body["metadata"]
    stack_id = uid_of(body)
    found = await stack_content(body, read, keyring, await store.latest_deployment_object(stack_id))
    try:
        emitted = await store.save_stack(
            stack_id, stack_row_name(meta["namespace"], meta["name"]), found.description, found.labels,
            found.annotations, found.content, found.rollout,
        )
    except Conflict as exc:
        raise InvalidSpec("StackDeleted", str(exc)) from exc
    if found.rollout is not None:
        await advance(store, stack_id)
    do = emitted.deployment_object
    status = await stack_target_status(store, stack_id, do, body.get("status") or {}, now, found.rollout)
    status["stackId"] = str(stack_id)
    status["deploymentObject"] = deployment_object_status(do, found.count)
    outcome = ready(do, found)
    milestones: tuple[Milestone, ...] = ()
    if emitted.created:
        milestones = (Milestone("Emitted", f"deployment object sequence {do.sequence_id} emitted ({found.count}"
                                           " resources)"),)
    previous_reason = next((c.get("reason") for c in (body.get("status") or {}).get("conditions") or ()
                            if c.get("type") == "Ready"), None)
    if outcome.reason == INLINE_SECRETS and previous_reason != INLINE_SECRETS:
        milestones += (Milestone(INLINE_SECRETS, outcome.message, "Warning"),)
    return Result(outcome, status, milestones), emitted.created


async def observe_stack(store: Store, body: Mapping[str, Any], now: str, read: SecretReader,
                        keyring: Keyring | None = None) -> Result:
    """The outcome and status a Stack should show now, reading only; `needs_write` when the store does not hold
    what its spec renders to (a change no handler has stored yet).

    Everything comes from the spec and the store, keyed by the object's uid: nothing is read back from the
    status, which anyone allowed to write `stacks/status` could have forged.
    """
    stack_id = uid_of(body)
    latest = await store.latest_deployment_object(stack_id)
    found = await stack_content(body, read, keyring, latest)
    stored_policy = await store.stack_rollout(stack_id)
    if latest is None or latest.is_deletion_marker or latest.yaml_checksum != found.content.checksum or (
            stored_policy != found.rollout):
        return Result(retrying_outcome("Reconciling", "the spec is not stored yet"), {}, needs_write=True)
    status = await stack_target_status(store, stack_id, latest, body.get("status") or {}, now, found.rollout)
    status["stackId"] = str(stack_id)
    status["deploymentObject"] = deployment_object_status(latest, found.count)
    return Result(ready(latest, found), status)


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
    await store.soft_delete_stack(uid_of(body))


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
