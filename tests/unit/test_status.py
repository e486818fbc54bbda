"""Status stanzas and conditions from store rows: pure functions."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

from stackyard.controller.conditions import Outcome, conditions_for
from stackyard.controller.status import agent_phase, agents_status, heartbeat_is_old, newly_failed, target_state
from stackyard.store import DeploymentObject, TargetRow

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=timezone.utc)


def deployment_object(sequence: int, marker: bool = False) -> DeploymentObject:
    return DeploymentObject(uuid.uuid4(), uuid.uuid4(), sequence, "0" * 64, NOW, marker, "")


def row(agent: str = "edge", status: str | None = None, sequence: int | None = None, registered: bool = True,
        message: str | None = None) -> TargetRow:
    return TargetRow(uuid.uuid4(), agent, "eu-1", uuid.uuid4() if registered else None, "ACTIVE", NOW, status,
                     message, NOW if status else None, sequence)


def test_target_state_follows_the_agents_last_event_on_the_latest_version():
    latest = deployment_object(7)
    assert target_state(latest, row(registered=False))[0] == "Pending"
    assert target_state(latest, row(status="SUCCESS", sequence=6))[:2] == ("Pending", 6)
    assert target_state(latest, row(status="SUCCESS", sequence=7))[:2] == ("Applied", 7)
    assert target_state(latest, row(status="FAILURE", sequence=7, message="boom")) == ("Failed", 7, "boom")
    marker = deployment_object(8, marker=True)
    assert target_state(marker, row(status="SUCCESS", sequence=7))[0] == "Deleting"
    assert target_state(marker, row(status="SUCCESS", sequence=8))[0] == "Applied"


def test_agents_status_counts_and_lists_failures_first_and_keeps_transition_times():
    latest = deployment_object(3)
    rows = [row("a", "SUCCESS", 3), row("b", "FAILURE", 3), row("c")]
    counts, entries = agents_status(latest, rows, None, "T1")
    assert counts == {"total": 3, "applied": 1, "failed": 1, "pending": 1, "healthy": 0, "progressing": 0, "degraded": 0}
    assert [e["agentName"] for e in entries] == ["b", "c", "a"]
    _, again = agents_status(latest, rows, entries, "T2")
    assert {e["lastTransitionTime"] for e in again} == {"T1"}, "unchanged states keep their time"


def test_newly_failed_reports_each_failure_once_per_version():
    before = [{"agentName": "a", "clusterName": "eu-1", "state": "Failed", "sequenceId": 3}]
    after = [{"agentName": "a", "clusterName": "eu-1", "state": "Failed", "sequenceId": 3},
             {"agentName": "b", "clusterName": "eu-1", "state": "Failed", "sequenceId": 3}]
    assert [e["agentName"] for e in newly_failed(before, after)] == ["b"]
    after[0]["sequenceId"] = 4
    assert [e["agentName"] for e in newly_failed(before, after)] == ["a", "b"]


def test_agent_phase_and_the_heartbeat_throttle():
    assert agent_phase(None, NOW, 30) == "Pending"
    assert agent_phase(NOW - timedelta(seconds=10), NOW, 30) == "Active"
    assert agent_phase(NOW - timedelta(seconds=31), NOW, 30) == "Stale"
    old = {"lastHeartbeat": "2026-11-23T12:00:00Z"}
    assert not heartbeat_is_old(old, {"lastHeartbeat": "2026-11-23T12:00:30Z"}, 60)
    assert heartbeat_is_old(old, {"lastHeartbeat": "2026-11-23T12:01:00Z"}, 60)


def test_conditions_follow_kstatus_and_keep_transition_times():
    ready = conditions_for(Outcome("True", "Reconciled", "ok"), 2, None, now="T1")
    assert [(c["type"], c["status"]) for c in ready] == [("Ready", "True")], "Reconciling/Stalled only while true"
    stalled = conditions_for(Outcome("False", "Bad", "no", stalled=True), 3, ready, now="T2")
    assert [(c["type"], c["status"], c["lastTransitionTime"]) for c in stalled] == [
        ("Ready", "False", "T2"), ("Stalled", "True", "T2")]
    same = conditions_for(Outcome("False", "Bad", "still no", stalled=True), 3, stalled, now="T3")
    assert {c["lastTransitionTime"] for c in same} == {"T2"} and all(c["observedGeneration"] == 3 for c in same)
