"""Staged rollout of a Stack's new version across its targeted agents (README, "Health, drift and rollout").

`spec.rollout: {maxUnavailable: 2 | "25%", pause: false}`. A new version is
released to at most `maxUnavailable` agents that are not yet healthy on it; more
are released as agents report it healthy; an agent Degraded on it halts the
rollout until it recovers or the Stack changes; `pause` holds it. The release
of each target is a column of its row (`agent_targets.released_sequence`), so
the decision survives an operator restart and the agents only read it.
Everything here is pure except `advance`, which runs the decision in one
store transaction.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..protocol import HEALTH_DEGRADED, HEALTH_HEALTHY, HEALTH_UNKNOWN
from ..store import DeploymentObject, Store, TargetRow
from .render import InvalidSpec

PERCENT = re.compile(r"^([0-9]{1,3})%$")


def parse_rollout(spec: Mapping[str, Any]) -> dict[str, Any] | None:
    """The stored policy of `spec.rollout`, or None when every target simply follows the latest version."""
    raw = spec.get("rollout")
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise InvalidSpec("InvalidRollout", "spec.rollout must be an object with maxUnavailable and pause")
    unknown = sorted(set(raw) - {"maxUnavailable", "pause"})
    if unknown:
        raise InvalidSpec("InvalidRollout", f"spec.rollout.{unknown[0]} is not a rollout setting")
    limit = raw.get("maxUnavailable", "100%")
    match = PERCENT.match(limit) if isinstance(limit, str) else None
    if isinstance(limit, bool) or not (isinstance(limit, int) and limit >= 1 or match and 1 <= int(match[1]) <= 100):
        raise InvalidSpec("InvalidRollout", f"spec.rollout.maxUnavailable must be a whole number >= 1 or a"
                                            f" percentage from 1% to 100%, not {limit!r}")
    pause = raw.get("pause", False)
    if not isinstance(pause, bool):
        raise InvalidSpec("InvalidRollout", "spec.rollout.pause must be true or false")
    if limit == "100%" and not pause:
        return None
    return {"maxUnavailable": limit, "pause": pause}


def budget(policy: Mapping[str, Any], total: int) -> int:
    """maxUnavailable as a number of agents: a percentage of the targets, rounded down, at least 1."""
    limit = policy.get("maxUnavailable", "100%")
    if isinstance(limit, int):
        return limit
    return max(1, total * int(str(limit).rstrip("%")) // 100)


def health_on(row: TargetRow, sequence_id: int) -> str:
    """The health an agent reported for this version of the stack (Unknown until it reports one)."""
    if row.health_sequence_id != sequence_id or not row.health_details:
        return HEALTH_UNKNOWN
    return str(row.health_details.get("health") or HEALTH_UNKNOWN)


def released(row: TargetRow, sequence_id: int) -> bool:
    return row.released_sequence is None or row.released_sequence >= sequence_id


def unhealthy_message(row: TargetRow) -> str:
    details = row.health_details or {}
    first = (details.get("unhealthy") or [{}])[0]
    return f"{first.get('object', '')}: {first.get('message', '')}".strip(": ") or "unhealthy"


@dataclass(frozen=True)
class RolloutView:
    """Where a staged rollout stands, for the decision and for the Stack's status."""

    sequence_id: int
    total: int
    released: int
    healthy: int
    max_unavailable: int
    paused: bool
    halted_by: TargetRow | None
    waiting: tuple[TargetRow, ...]  # not released yet, in release order

    def to_release(self) -> list[TargetRow]:
        if self.paused or self.halted_by is not None:
            return []
        unavailable = self.released - self.healthy
        return list(self.waiting[: max(0, self.max_unavailable - unavailable)])

    def status(self) -> dict[str, Any]:
        return {"sequenceId": self.sequence_id, "released": self.released, "healthy": self.healthy,
                "total": self.total, "maxUnavailable": self.max_unavailable, "paused": self.paused}


def view(policy: Mapping[str, Any] | None, latest: DeploymentObject | None,
         rows: Sequence[TargetRow]) -> RolloutView | None:
    """The rollout of the latest version, or None when the Stack has no staged rollout (or is being deleted)."""
    if policy is None or latest is None or latest.is_deletion_marker:
        return None
    sequence = latest.sequence_id
    out = [r for r in rows if released(r, sequence)]
    healthy = [r for r in out if health_on(r, sequence) == HEALTH_HEALTHY]
    degraded = [r for r in out if health_on(r, sequence) == HEALTH_DEGRADED]
    waiting = sorted((r for r in rows if not released(r, sequence)), key=lambda r: (r.agent_name, r.cluster_name))
    return RolloutView(sequence, len(rows), len(out), len(healthy), budget(policy, len(rows)),
                       bool(policy.get("pause")), degraded[0] if degraded else None, tuple(waiting))


def decide(policy: Mapping[str, Any] | None, latest: DeploymentObject | None,
           rows: Sequence[TargetRow]) -> list[tuple[str, str]]:
    """The (agent, cluster) pairs to release the latest version to now."""
    current = view(policy, latest, rows)
    return [] if current is None else [(r.agent_name, r.cluster_name) for r in current.to_release()]


async def advance(store: Store, stack_id: uuid.UUID) -> list[tuple[str, str]]:
    """Release the latest version to as many agents as the policy allows now (one transaction, row-locked)."""
    return await store.advance_rollout(stack_id, decide)
