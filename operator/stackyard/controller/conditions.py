"""The outcome of a reconcile and the Kubernetes-style conditions it becomes (Ready, Reconciling, Stalled), which
kubectl wait, Flux and kstatus read.

Ready, Reconciling and Stalled belong to the reconcile outcome (`conditions_for`); other types (a Stack's
Healthy and RolloutHalted) are set by the status path (`set_condition`) and survive the outcome's writes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from .render import InvalidSpec

MAX_MESSAGE = 2048
OUTCOME_TYPES = ("Ready", "Reconciling", "Stalled")


def now_rfc3339() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class Outcome:
    """What one reconcile concluded.

    ready: "True", "False" or "Unknown". Reconciling and Stalled are present
    (and True) only while abnormal, as kstatus expects.
    """

    ready: str
    reason: str
    message: str
    reconciling: bool = False
    stalled: bool = False


def conditions_for(
    outcome: Outcome, generation: int | None, previous: Sequence[Mapping[str, Any]] | None, now: str | None = None
) -> list[dict[str, Any]]:
    """The full conditions list for `outcome`, keeping lastTransitionTime where a status did not change,
    and the conditions of other types as they are."""
    now = now or now_rfc3339()
    before = {c.get("type"): c for c in previous or () if isinstance(c, Mapping)}
    message = outcome.message[:MAX_MESSAGE]
    wanted = [("Ready", outcome.ready)]
    if outcome.reconciling:
        wanted.append(("Reconciling", "True"))
    if outcome.stalled:
        wanted.append(("Stalled", "True"))
    result = []
    for kind, status in wanted:
        old = before.get(kind)
        changed = old is None or old.get("status") != status
        condition = {
            "type": kind,
            "status": status,
            "reason": outcome.reason,
            "message": message,
            "lastTransitionTime": now if changed or old is None else old.get("lastTransitionTime", now),
        }
        if generation is not None:
            condition["observedGeneration"] = generation
        result.append(condition)
    result += [dict(c) for c in previous or () if isinstance(c, Mapping) and c.get("type") not in OUTCOME_TYPES]
    return result


def set_condition(
    conditions: Sequence[Mapping[str, Any]] | None, kind: str, status: str | None, reason: str = "", message: str = "",
    now: str | None = None,
) -> list[dict[str, Any]]:
    """`conditions` with the condition `kind` set (or removed when `status` is None); the others untouched."""
    result = [dict(c) for c in conditions or () if isinstance(c, Mapping) and c.get("type") != kind]
    if status is None:
        return result
    old = next((c for c in conditions or () if isinstance(c, Mapping) and c.get("type") == kind), None)
    unchanged = old is not None and old.get("status") == status
    result.append({"type": kind, "status": status, "reason": reason, "message": message[:MAX_MESSAGE],
                   "lastTransitionTime": (old or {}).get("lastTransitionTime") if unchanged else (now or now_rfc3339())})
    return result


def ready_outcome(message: str, reason: str = "Reconciled") -> Outcome:
    return Outcome("True", reason, message)


def stalled_outcome(reason: str, message: str) -> Outcome:
    return Outcome("False", reason, message, stalled=True)


def retrying_outcome(reason: str, message: str, ready: str = "Unknown") -> Outcome:
    return Outcome(ready, reason, message, reconciling=True)


def becomes_stalled(previous: Mapping[str, Any], generation: int | None, reason: str) -> bool:
    """True unless `previous` already shows this generation Stalled for `reason` (an operator restart, a resync
    reaching the same verdict): a Stalled object is announced once, not on every pass."""
    if previous.get("observedGeneration") != generation:
        return True
    return not any(c.get("type") == "Stalled" and c.get("status") == "True" and c.get("reason") == reason
                   for c in previous.get("conditions") or () if isinstance(c, Mapping))


@dataclass(frozen=True)
class Milestone:
    """A Kubernetes Event worth posting (Normal, or a Warning the outcome explains): something a person would want
    in `kubectl describe`."""

    reason: str
    message: str
    type: str = "Normal"


@dataclass(frozen=True)
class Result:
    outcome: Outcome
    status: dict[str, Any]
    milestones: tuple[Milestone, ...] = ()
    # Observing found a state only a write settles (an AgentTarget whose Stack exists but has no row for it).
    needs_write: bool = False


def uid_of(body: Mapping[str, Any]) -> uuid.UUID:
    """The object's uid: the id of its row in the store (never a status field, which others can write)."""
    return uuid.UUID(body["metadata"]["uid"])


def spec_of(body: Mapping[str, Any]) -> Mapping[str, Any]:
    """The object's spec, or InvalidSpec."""
    spec = body.get("spec")
    if not isinstance(spec, Mapping):
        raise InvalidSpec("InvalidSpec", "spec is required and must be an object")
    return spec


def with_outcome(result: Result, generation: int | None, previous: Mapping[str, Any]) -> dict[str, Any]:
    """A result's status fields plus its conditions and observedGeneration."""
    status = dict(result.status)
    status["conditions"] = conditions_for(result.outcome, generation,
                                          result.status.get("conditions") or previous.get("conditions"))
    if generation is not None:
        status["observedGeneration"] = generation
    return status
