"""Pure functions from store rows to the status stanzas of Stack, AgentTarget and Agent."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

from ..overlays import Agent as OverlayAgent
from ..protocol import (
    HEALTH_DEGRADED,
    HEALTH_HEALTHY,
    HEALTH_PROGRESSING,
    HEALTH_UNKNOWN,
    PHASE_ACTIVE,
    PHASE_PENDING,
    PHASE_STALE,
)
from ..store import Agent, DeploymentObject, TargetRow
from ..store import EventRow
from .overlays import agent_overlays

MAX_AGENTS_IN_STATUS = 100
MAX_STATUS_MESSAGE = 512


def rfc3339(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def deployment_object_status(do: DeploymentObject, resource_count: int | None = None) -> dict[str, Any]:
    status: dict[str, Any] = {
        "id": str(do.id),
        "sequenceId": do.sequence_id,
        "checksum": do.yaml_checksum,
        "submittedAt": rfc3339(do.submitted_at),
    }
    if resource_count is not None:
        status["resourceCount"] = resource_count
    return status


def target_state(latest: DeploymentObject | None, row: TargetRow) -> tuple[str, int | None, str]:
    """(state, sequenceId, message) of one target given the stack's latest deployment object."""
    if latest is None:
        return "Pending", None, "no deployment object yet"
    if row.agent_id is None:
        return "Pending", None, f"agent {row.agent_name!r} in cluster {row.cluster_name!r} is not registered"
    held = (row.released_sequence is not None and row.released_sequence < latest.sequence_id
            and not latest.is_deletion_marker)
    on_latest = row.event_sequence_id == latest.sequence_id
    if latest.is_deletion_marker:
        if on_latest and row.event_status == "SUCCESS":
            return "Applied", latest.sequence_id, "objects removed"
        return "Deleting", row.event_sequence_id, row.event_message or "waiting for the agent to remove the objects"
    if not held and (failure := overlay_failure(latest, row) or impersonation_refused(row)) is not None:
        return "Failed", latest.sequence_id, failure
    if on_latest and row.event_status == "SUCCESS":
        return "Applied", latest.sequence_id, row.event_message or "applied"
    if on_latest and row.event_status == "FAILURE":
        return "Failed", latest.sequence_id, row.event_message or "apply failed"
    if held:
        return "Pending", row.event_sequence_id, (f"held by the rollout: sequence {latest.sequence_id} is not released"
                                                  " to this agent yet")
    return "Pending", row.event_sequence_id, f"waiting for the agent to apply sequence {latest.sequence_id}"


def overlays_of(latest: DeploymentObject | None, row: TargetRow) -> tuple[list[int], str | None]:
    """(the overlays of the latest version that apply to this agent, why its rendering fails or None)."""
    if latest is None or not latest.overlays or row.agent_id is None:
        return [], None
    return agent_overlays(latest.overlays, OverlayAgent(row.agent_name, row.cluster_name, dict(row.agent_labels or {})))


def overlay_failure(latest: DeploymentObject, row: TargetRow) -> str | None:
    """`OverlayFailed: ...` when this agent cannot be given the latest version (a variable it has no value for)."""
    error = overlays_of(latest, row)[1]
    return None if error is None else f"OverlayFailed: {error}"


def impersonation_refused(row: TargetRow) -> str | None:
    """Why the agent applies nothing of this stack (its Agent requires impersonation and maps no service account
    to the stack's namespace), or None."""
    if not (row.apply_as or {}).get("refused"):
        return None
    return (f"ImpersonationRequired: Agent {row.agent_name} requires impersonation and its spec.impersonate maps"
            " no service account to this Stack's namespace: nothing is applied")


def health_of(row: TargetRow, sequence_id: int | None, failed: str | None = None) -> tuple[str, list[dict[str, Any]]]:
    """The health an agent reported for one version of the stack, and its first unhealthy objects. A version the
    agent failed to apply (`failed`: the failure) is Degraded whatever it reported before: its objects are not
    what the Stack says."""
    if failed is not None:
        return HEALTH_DEGRADED, [{"object": "apply", "status": "Failed", "message": failed}]
    if sequence_id is None or row.health_sequence_id != sequence_id or not row.health_details:
        return HEALTH_UNKNOWN, []
    details = row.health_details
    return str(details.get("health") or HEALTH_UNKNOWN), list(details.get("unhealthy") or [])


def apply_failure(latest: DeploymentObject | None, row: TargetRow) -> str | None:
    """The agent's failure message when its latest attempt at the stack's current version failed, else None."""
    if latest is None or latest.is_deletion_marker:
        return None
    state, _sequence, message = target_state(latest, row)
    return message if state == "Failed" else None


def first_problem(unhealthy: Sequence[Mapping[str, Any]]) -> str:
    if not unhealthy:
        return ""
    return _truncate(f"{unhealthy[0].get('object')}: {unhealthy[0].get('message') or unhealthy[0].get('status')}")


def healthy_condition(latest: DeploymentObject | None, rows: Sequence[TargetRow]) -> tuple[str, str, str]:
    """(status, reason, message) of a Stack's Healthy condition: every targeted agent reports the current version
    healthy."""
    if latest is None:
        return "Unknown", "NoVersion", "no deployment object yet"
    if latest.is_deletion_marker:
        return "Unknown", "Deleting", "the stack is being deleted"
    if not rows:
        return "Unknown", "NoTargets", "no agent is targeted"
    healths = [(row, *health_of(row, latest.sequence_id, apply_failure(latest, row))) for row in rows]
    healthy = sum(1 for _, h, _ in healths if h == HEALTH_HEALTHY)
    if healthy == len(rows):
        return "True", "AllHealthy", f"{healthy}/{len(rows)} agents report sequence {latest.sequence_id} healthy"
    for row, health, unhealthy in healths:
        if health == HEALTH_DEGRADED and apply_failure(latest, row) is not None:
            return "False", "Degraded", _truncate(f"agent {row.agent_name} in cluster {row.cluster_name} failed to"
                                                  f" apply sequence {latest.sequence_id}: {row.event_message}")
    for row, health, unhealthy in healths:
        if health == HEALTH_DEGRADED:
            return "False", "Degraded", _truncate(f"agent {row.agent_name} in cluster {row.cluster_name} reports"
                                                  f" sequence {latest.sequence_id} Degraded: {first_problem(unhealthy)}")
    return "False", "Progressing", f"{healthy}/{len(rows)} agents report sequence {latest.sequence_id} healthy"


def _truncate(text: str) -> str:
    return text if len(text) <= MAX_STATUS_MESSAGE else text[: MAX_STATUS_MESSAGE - 1] + "…"


def agents_status(
    latest: DeploymentObject | None,
    rows: Sequence[TargetRow],
    previous: Sequence[Mapping[str, Any]] | None,
    now: str,
) -> tuple[dict[str, int], list[dict[str, Any]]]:
    """Target counts and the bounded per-agent list of a Stack's status."""
    before = {
        (p.get("agentName"), p.get("clusterName")): p for p in previous or () if isinstance(p, Mapping)
    }
    counts = {"total": len(rows), "applied": 0, "failed": 0, "pending": 0, "healthy": 0, "progressing": 0,
              "degraded": 0}
    entries = []
    for row in rows:
        state, sequence_id, message = target_state(latest, row)
        failed = apply_failure(latest, row)
        health, unhealthy = health_of(row, sequence_id, failed)
        on_latest = health_of(row, latest.sequence_id, failed)[0] if latest is not None else HEALTH_UNKNOWN
        if on_latest != HEALTH_UNKNOWN:
            counts[on_latest.lower()] += 1
        if state == "Applied":
            counts["applied"] += 1
        elif state == "Failed":
            counts["failed"] += 1
        else:
            counts["pending"] += 1
        old: Mapping[str, Any] = before.get((row.agent_name, row.cluster_name)) or {}
        unchanged = bool(old) and old.get("state") == state and old.get("sequenceId") == sequence_id
        entry: dict[str, Any] = {
            "agentName": row.agent_name,
            "clusterName": row.cluster_name,
            "state": state,
            "message": _truncate(message),
            "lastTransitionTime": old.get("lastTransitionTime", now) if unchanged else now,
            "health": health,
        }
        if sequence_id is not None:
            entry["sequenceId"] = sequence_id
        if latest is not None and latest.overlays:
            entry["overlays"] = overlays_of(latest, row)[0]
        if row.event_checksum is not None and state == "Applied":
            entry["checksum"] = row.event_checksum
        if unhealthy:
            entry["healthMessage"] = first_problem(unhealthy)
        if row.drift_time is not None:
            entry["lastDrift"] = drift_status(row)
        entries.append(entry)
    # Failed first, then Degraded, Pending/Deleting, then Applied: the ones people need to see survive the bound.
    order = {"Failed": 0, "Deleting": 1, "Pending": 2, "Applied": 3}
    entries.sort(key=lambda e: (order[e["state"]], e["health"] != HEALTH_DEGRADED, e["agentName"], e["clusterName"]))
    return counts, entries[:MAX_AGENTS_IN_STATUS]


def drift_status(row: TargetRow) -> dict[str, Any]:
    """The agent's latest drift repair on this stack: when, and what it said (objects, fields, writers)."""
    return {"time": rfc3339(row.drift_time), "message": _truncate(row.drift_message or "")}


def newly_failed(before: Any, after: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Entries of a Stack's `agents` list that are Failed now and were not Failed at that sequence before."""
    old = {(p.get("agentName"), p.get("clusterName")): p for p in before or () if isinstance(p, Mapping)}
    found = []
    for entry in after:
        previous = old.get((entry.get("agentName"), entry.get("clusterName")))
        if entry.get("state") == "Failed" and (
            previous is None or previous.get("state") != "Failed" or previous.get("sequenceId") != entry.get("sequenceId")
        ):
            found.append(entry)
    return found


def agent_phase(last_heartbeat: datetime | None, now: datetime, stale_after: float) -> str:
    """Pending until the first heartbeat, Active, then Stale after `stale_after` seconds of silence."""
    if last_heartbeat is None:
        return PHASE_PENDING
    if (now - last_heartbeat).total_seconds() > stale_after:
        return PHASE_STALE
    return PHASE_ACTIVE


def last_event_status(event: EventRow | None) -> dict[str, Any] | None:
    if event is None:
        return None
    return {
        "time": rfc3339(event.created_at),
        "type": event.event_type,
        "status": event.status,
        "message": _truncate(event.message or ""),
        "sequenceId": event.sequence_id,
    }


def agent_target_agent_status(agent: Agent | None) -> dict[str, Any]:
    """An AgentTarget's `agent` stanza (None values clear what a merge patch would otherwise keep)."""
    if agent is None:
        return {"registered": False, "status": None, "lastHeartbeat": None}
    status: dict[str, Any] = {"registered": True, "status": agent.status}
    if agent.last_heartbeat is not None:
        status["lastHeartbeat"] = rfc3339(agent.last_heartbeat)
    return status


def visible(status: Mapping[str, Any] | None, keys: tuple[str, ...]) -> dict[str, Any]:
    """The parts of a status that people look at, without timestamps that move on their own."""

    def strip(value: Any) -> Any:
        if isinstance(value, Mapping):  # a key set to None is a key a merge patch removes: the same as absent
            return {k: strip(v) for k, v in value.items()
                    if k not in ("lastTransitionTime", "lastHeartbeat") and v is not None}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    status = status or {}
    return {key: strip(status.get(key)) for key in keys}


def heartbeat_is_old(previous: Mapping[str, Any], status: Mapping[str, Any], throttle: float) -> bool:
    """True when the recorded lastHeartbeat lags the real one by at least `throttle` seconds."""
    new, old = status.get("lastHeartbeat"), previous.get("lastHeartbeat")
    if new is None or new == old:
        return False
    if old is None:
        return True

    def parse(value: str) -> datetime:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))

    return (parse(new) - parse(old)).total_seconds() >= throttle


def overall_health(healths: list[str]) -> str:
    """One health for several agents: Degraded if any is, Healthy if all are, else Progressing (Unknown: none)."""
    if not healths:
        return HEALTH_UNKNOWN
    if HEALTH_DEGRADED in healths:
        return HEALTH_DEGRADED
    if all(h == HEALTH_HEALTHY for h in healths):
        return HEALTH_HEALTHY
    return HEALTH_PROGRESSING
