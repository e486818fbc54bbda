"""The agent decides here, purely: from the desired state, the inventories, the clock and the retry state,
which objects to delete and which stacks to apply. The loop (`loop.py`) only carries the plan out.

Rules (docs/architecture.md, "Agent"):
- Fail closed: an object is deleted only if an inventory of this agent lists it.
- An object that a live stack's current version claims is never deleted on behalf of a dead or
  older stack (a Stack deleted and re-created under the same name must not blink).
- A stack must stay dead (deletion marker, or no longer targeted) for the deletion grace period
  before its objects go.
- Deletions are carried out before applies.
- A stack already applied at its deployment object and checksum is not applied again until a drift repair
  is due (then its objects are compared first, to report drift); a failed one waits for its backoff. (The
  checksum changes without a new version when the agent's rendering of the stack's overlays does: relabelled.)
- A stack blocked for this agent (its rendering failed, or the Agent requires impersonation and maps none to
  the stack's namespace) is like one whose YAML cannot be read: what it applied stays, nothing is pruned for
  it, and the reason is reported.
- The health of an applied stack is checked when its check is due (right after an apply, then with
  backoff while it is not healthy, and at the drift interval once it is).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..backoff import Backoff
from ..protocol import WireStack
from .manifests import BadManifest, Inventory, ObjectRef, parse_objects, refs


def attempt_key(stack: WireStack) -> str:
    """What a retry backoff belongs to: a version as this agent received it (a new rendering starts afresh)."""
    return f"{stack.deployment_object_id}/{stack.checksum}"


@dataclass(frozen=True)
class Deletion:
    """A dead stack's cleanup: delete `objects`, then its inventory. `marker` when it was deleted (not untargeted)."""

    stack_id: str
    inventory: Inventory
    objects: frozenset[ObjectRef]
    marker: WireStack | None


@dataclass(frozen=True)
class Apply:
    """A live stack to apply: its parsed objects (or why they cannot be), its previous inventory, what to prune."""

    stack: WireStack
    objects: list[dict[str, Any]] | BadManifest
    inventory: Inventory | None
    prune: frozenset[ObjectRef]
    repair: bool = False  # already applied at this version: a drift repair (compare before applying)


@dataclass
class Plan:
    deletions: list[Deletion] = field(default_factory=list)
    applies: list[Apply] = field(default_factory=list)
    # Deletion markers of stacks this agent never applied: reported once as done, nothing to remove.
    nothing_to_remove: list[WireStack] = field(default_factory=list)
    # Applied stacks whose health check is due (stacks applied in this cycle are checked after their apply).
    health_checks: list[tuple[WireStack, list[dict[str, Any]]]] = field(default_factory=list)


def plan(
    desired: list[WireStack],
    inventories: Mapping[str, Inventory],
    now: float,
    dead_since: dict[str, float],
    backoffs: Mapping[str, Backoff],
    reported_markers: set[str],
    deletion_grace: float,
    drift_due: bool,
    health_due: Mapping[str, float] | None = None,
) -> Plan:
    """What one sync cycle does. Updates `dead_since` (when each dead stack was first seen dead)."""
    live = {s.stack_id: s for s in desired if not s.is_deletion_marker}
    markers = {s.stack_id: s for s in desired if s.is_deletion_marker}
    parsed: dict[str, list[dict[str, Any]] | BadManifest] = {}
    for stack_id, stack in live.items():
        if stack.blocked is not None:  # not for this agent now (a failed rendering, a refused impersonation)
            parsed[stack_id] = BadManifest(stack.blocked)
            continue
        try:
            parsed[stack_id] = parse_objects(stack.yaml)
        except BadManifest as exc:
            parsed[stack_id] = exc
    claimed: set[ObjectRef] = set()
    for stack_id, objects in parsed.items():
        if isinstance(objects, BadManifest):  # unknown content: keep what it had
            claimed |= inventories[stack_id].objects if stack_id in inventories else set()
        else:
            claimed |= refs(objects)

    result = Plan()
    for stack_id in [s for s in dead_since if s in live]:
        del dead_since[stack_id]
    for stack_id, left in inventories.items():
        if stack_id in live:
            continue
        if now - dead_since.setdefault(stack_id, now) < deletion_grace:
            continue
        result.deletions.append(Deletion(stack_id, left, left.objects - claimed, markers.get(stack_id)))
    for stack_id, marker in markers.items():
        if stack_id not in inventories and marker.deployment_object_id not in reported_markers:
            result.nothing_to_remove.append(marker)

    for stack_id in sorted(live, key=lambda i: live[i].stack_name):
        stack, objects = live[stack_id], parsed[stack_id]
        inventory: Inventory | None = inventories.get(stack_id)
        done = (inventory is not None and inventory.deployment_object_id == stack.deployment_object_id
                and inventory.checksum == stack.checksum and inventory.applied)
        if done and not drift_due:
            due = (health_due or {}).get(stack.deployment_object_id, now)
            if due <= now and not isinstance(objects, BadManifest):
                result.health_checks.append((stack, objects))
            continue
        backoff = backoffs.get(attempt_key(stack))
        if backoff is not None and backoff.waiting():
            continue
        old = inventory.objects if inventory else frozenset()
        new = frozenset() if isinstance(objects, BadManifest) else refs(objects)
        result.applies.append(Apply(stack, objects, inventory, frozenset(old - new - claimed), repair=done))
    return result
