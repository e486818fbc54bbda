"""Statuses follow their dependencies promptly, not at the next resync, and people get Kubernetes Events.

The operator here resyncs every 300 s, as a production one might: whatever
these tests see within a few seconds came from the prompt path (the handlers
and the status mirror), not from the periodic safety net.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from .builders import configmap, stack, target
from .operator_harness import (
    AGENT_TARGETS,
    AGENTS,
    STACKS,
    OperatorThread,
    about,
    condition,
    eventually,
    kube_events,
    operator_config,
)

PROMPT = 5.0  # seconds; the resync interval is 300


@pytest.fixture
def operator(kube_server, db_url) -> Iterator[OperatorThread]:
    running = OperatorThread(kube_server, operator_config(db_url, kube_server, resync_interval=300.0)).start()
    try:
        yield running
    finally:
        running.stop()


async def test_a_new_agent_target_is_counted_by_its_stack_at_once(operator, cluster):
    await cluster.create(STACKS, stack("web", [configmap("a")]))
    await cluster.wait_condition(STACKS, "web", "Ready", "True")
    await cluster.create(AGENT_TARGETS, target("t1", "web"))
    await cluster.create(AGENT_TARGETS, target("t2", "web", agent="edge-2"))

    async def total(expected: int):
        async def check():
            return ((await cluster.get(STACKS, "web"))["status"].get("targets") or {}).get("total") == expected

        return check

    await eventually(await total(2), timeout=PROMPT)
    await cluster.delete(AGENT_TARGETS, "t1")
    await eventually(await total(1), timeout=PROMPT)


def store_row_id(db, stack_id: uuid.UUID) -> uuid.UUID:
    (row_id,) = db.execute("SELECT id FROM agent_targets WHERE stack_id = %s", (stack_id,)).fetchone()
    return row_id


async def test_agent_target_follows_its_stack_being_deleted_and_created_again(operator, cluster, db):
    await cluster.create(STACKS, stack("web", [configmap("a")]))
    await cluster.create(AGENT_TARGETS, target("t", "web"))
    ready = await cluster.wait_condition(AGENT_TARGETS, "t", "Ready", "True", timeout=PROMPT)
    assert ready["status"]["deployment"]["state"] == "Pending"

    await cluster.delete(STACKS, "web")
    waiting = await cluster.wait_condition(AGENT_TARGETS, "t", "Ready", "False", reason="StackNotFound", timeout=PROMPT)
    assert "deployment" not in waiting["status"], "no stale deployment state once the Stack is gone"
    assert "targetId" not in waiting["status"] and "stackId" not in waiting["status"]

    created = await cluster.create(STACKS, stack("web", [configmap("a")]))
    new_uid = uuid.UUID(created["metadata"]["uid"])
    ready = await cluster.wait_condition(AGENT_TARGETS, "t", "Ready", "True", timeout=PROMPT)
    assert ready["status"]["stackId"] == str(new_uid)
    assert ready["status"]["targetId"] == str(store_row_id(db, new_uid))


async def test_waiting_for_a_stack_is_not_an_error(operator, cluster, caplog):
    await cluster.create(AGENT_TARGETS, target("early", "later"))
    await cluster.wait_condition(AGENT_TARGETS, "early", "Ready", "False", reason="StackNotFound")
    await cluster.create(STACKS, stack("later", [configmap("a")]))
    await cluster.wait_condition(AGENT_TARGETS, "early", "Ready", "True", timeout=PROMPT)
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert errors == [], f"an expected wait was logged as an error: {errors}"


async def test_events_for_problems_and_milestones_never_for_heartbeats(operator, cluster, store):
    # a Stalled object: a Warning naming the reason
    await cluster.create(STACKS, stack("dupes", [configmap("a"), configmap("a", {"x": "y"})]))
    await cluster.wait_condition(STACKS, "dupes", "Stalled", "True")

    async def stalled_event():
        return [e for e in about(await kube_events(cluster), "dupes") if e["type"] == "Warning"]

    warning = (await eventually(stalled_event))[0]
    assert warning["reason"] == "DuplicateResource" and "both ConfigMap a" in warning["message"]
    assert warning["involvedObject"]["kind"] == "Stack"

    # milestones: a deployment object emitted, a key issued, a key rotated
    await cluster.create(STACKS, stack("web", [configmap("a")]))
    await eventually(lambda: _found(cluster, "web", "Emitted"))
    await cluster.create(AGENTS, {"metadata": {"name": "edge"}, "spec": {"clusterName": "eu-1"}})
    ready = await cluster.wait_condition(AGENTS, "edge", "Ready", "True")
    await eventually(lambda: _found(cluster, "edge", "KeyIssued"))
    await cluster.patch(AGENTS, "edge", {"metadata": {"annotations": {"stackyard.dev/rotate-pak": "1"}}})
    rotated = await eventually(lambda: _found(cluster, "edge", "KeyRotated"))
    assert rotated[0]["type"] == "Normal"

    # heartbeats change the Agent's phase once (Pending -> Active) and post no Event at all
    before = len(await kube_events(cluster))
    agent_id = uuid.UUID(ready["status"]["agentId"])
    for _ in range(20):
        await store.heartbeat(agent_id)

    async def active():
        return (await cluster.get(AGENTS, "edge"))["status"].get("phase") == "Active"

    await eventually(active, timeout=PROMPT)
    assert len(await kube_events(cluster)) == before
    assert condition(await cluster.get(AGENTS, "edge"), "Ready")["status"] == "True"


async def _found(cluster, name: str, reason: str) -> list[dict]:
    return about(await kube_events(cluster), name, reason)
