"""Status stanzas and conditions from store rows: pure functions."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

from stackyard.controller.conditions import Outcome, becomes_stalled, conditions_for
from stackyard.controller.agents import agent_release
from stackyard.controller.status import (
    agent_phase,
    agents_status,
    healthy_condition,
    heartbeat_is_old,
    newly_failed,
    target_state,
)
from stackyard.store import Agent, DeploymentObject, TargetRow

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
    # an agent that failed to apply the current version counts as Degraded (its objects are not what the Stack says)
    assert counts == {"total": 3, "applied": 1, "failed": 1, "pending": 1, "healthy": 0, "progressing": 0, "degraded": 1}
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


def test_a_failed_apply_makes_the_stack_degraded_not_progressing():
    latest = deployment_object(3)
    rows = [row("a", "FAILURE", 3, message="no kind Widget is served"), row("b", "SUCCESS", 3)]
    status, reason, message = healthy_condition(latest, rows)
    assert (status, reason) == ("False", "Degraded"), "Argo CD's health script shows Degraded, not Progressing"
    assert "agent a in cluster eu-1 failed to apply sequence 3: no kind Widget is served" in message
    _counts, entries = agents_status(latest, rows, None, "T1")
    failed = next(e for e in entries if e["agentName"] == "a")
    assert failed["health"] == "Degraded" and "no kind Widget" in failed["healthMessage"]
    # an older failure is not this version's: the agent has not tried sequence 3 yet
    assert healthy_condition(latest, [row("a", "FAILURE", 2)])[1] == "Progressing"


def test_a_stall_is_announced_once_per_generation_and_reason():
    stalled = {"observedGeneration": 2, "conditions": [{"type": "Stalled", "status": "True", "reason": "Bad"}]}
    assert not becomes_stalled(stalled, 2, "Bad"), "the same verdict again (a restart, a resync): no new Event"
    assert becomes_stalled(stalled, 3, "Bad"), "a new generation that is still bad: announced"
    assert becomes_stalled(stalled, 2, "Other"), "another reason: announced"
    assert becomes_stalled({}, 1, "Bad")


def agent(held: int | None, beat: float | None, deleting: float = 0.0) -> Agent:
    """An agent row that heartbeated `beat` seconds after NOW (None: never) and is deleted since NOW+deleting."""
    return Agent(uuid.uuid4(), "edge", "eu-1", "ACTIVE", NOW + timedelta(seconds=beat) if beat is not None else None,
                 None, NOW, held_stacks=held, deleting_since=NOW + timedelta(seconds=deleting))


def test_a_deleted_agent_is_let_go_once_it_holds_nothing_or_cannot_answer():
    now = NOW + timedelta(seconds=20)
    assert agent_release(agent(0, beat=12), now, 30, 300).done, "holds nothing, said so after the deletion"
    assert not agent_release(agent(0, beat=-1), now, 30, 300).done, "a report from before the deletion is not enough"
    waiting = agent_release(agent(2, beat=15), now, 30, 300)
    assert not waiting.done and "remove 2 stacks" in waiting.message
    assert agent_release(agent(None, beat=None), now, 30, 300).done, "never connected: holds nothing"
    stale = agent_release(agent(2, beat=-40), now, 30, 300)
    assert stale.done and stale.left_behind and "stackyard.dev/stack=" in stale.message
    late = agent_release(agent(1, beat=295), NOW + timedelta(seconds=301), 30, 300)
    assert late.done and late.left_behind and "after 300s" in late.message
