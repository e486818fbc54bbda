"""Heartbeats and events reach the status through LISTEN/NOTIFY, without a patch per heartbeat."""

from __future__ import annotations

import uuid

from stackyard.store import EventIn

from .builders import configmap
from .operator_harness import AGENT_TARGETS, AGENTS, STACKS, eventually


def sample(metrics, name: str, labels: dict) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return value or 0.0


async def test_heartbeats_do_not_patch_status_each_time_but_phase_and_events_do(operator, cluster, store):
    await cluster.create(AGENTS, {"metadata": {"name": "edge"}, "spec": {"clusterName": "eu-1"}})
    obj = await cluster.wait_condition(AGENTS, "edge", "Ready", "True")
    agent_id = uuid.UUID(obj["status"]["agentId"])
    await cluster.create(STACKS, {"metadata": {"name": "web"}, "spec": {"resources": [configmap("a")]}})
    await cluster.create(AGENT_TARGETS, {"metadata": {"name": "t"},
                                         "spec": {"stackRef": {"name": "web"}, "agentName": "edge", "clusterName": "eu-1"}})
    stack = await cluster.wait_condition(STACKS, "web", "Ready", "True")

    await store.heartbeat(agent_id)

    async def active():
        return (await cluster.get(AGENTS, "edge"))["status"].get("phase") == "Active"

    await eventually(active, timeout=3)
    patches_before = sample(operator.metrics, "stackyard_status_patches_total", {"kind": "Agent"})
    for _ in range(20):
        await store.heartbeat(agent_id)

    # an event shows up in the Stack's status within about a second; the mirror handles notifications in
    # order, so once the event is in the Agent's status every heartbeat before it has been handled too
    agent = await store.get_agent(agent_id)
    do_id = uuid.UUID(stack["status"]["deploymentObject"]["id"])
    await cluster.wait_targeted("web", 1)
    await store.record_events(agent, [EventIn(do_id, "APPLY", "SUCCESS", "applied 1 objects")])

    async def applied():
        entries = (await cluster.get(STACKS, "web"))["status"].get("agents") or []
        return entries and entries[0]["state"] == "Applied"

    await eventually(applied, timeout=3, interval=0.05)  # the deadline: about a second, with slack for CI
    await eventually(lambda: _has_last_event(cluster), timeout=3)
    patches_after = sample(operator.metrics, "stackyard_status_patches_total", {"kind": "Agent"})
    # 20 heartbeats: at most one throttled patch; plus the lastEvent patch, which the mirror and the phase
    # timer (1 s here) may both write
    assert patches_after - patches_before <= 3, "heartbeats do not patch the status each time"
    assert sample(operator.metrics, "stackyard_status_mirror_lag_seconds_count", {}) >= 1


async def _has_last_event(cluster) -> bool:
    status = (await cluster.get(AGENTS, "edge"))["status"]
    return status.get("lastEvent", {}).get("status") == "SUCCESS"
