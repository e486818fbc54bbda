"""Defects found on a real API server, round two, each reproduced against the emulator made as strict as the
server where it matters (label values, removals in managedFields): deep input, prompt Stack counts, long
agent names, generations that must end observed, status nobody but the operator may be trusted for, stalls
that are announced once, tenancy that reveals nothing, apply failures that are Degraded.

The operator here resyncs every 300 s unless a test says otherwise: what these tests see within seconds
came from the prompt path, not from the periodic safety net.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator

import pytest

from stackyard.controller import stacks
from stackyard.store import EventIn

from .builders import configmap, stack, target
from .kubectl import SECRETS, KubeError
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

PROMPT = 3.0


@pytest.fixture
def operator(kube_server, db_url) -> Iterator[OperatorThread]:
    running = OperatorThread(kube_server, operator_config(db_url, kube_server, resync_interval=300.0)).start()
    try:
        yield running
    finally:
        running.stop()


def nested(levels: int) -> dict:
    deep: dict = {}
    leaf = deep
    for _ in range(levels):
        leaf["k"] = {}
        leaf = leaf["k"]
    return deep


def no_server_internals(text: str) -> bool:
    return "Traceback" not in text and ".py" not in text and "/work/" not in text and "site-packages" not in text


async def test_deep_input_stalls_and_no_failure_posts_a_traceback(operator, cluster, caplog, monkeypatch):
    deep = configmap("deep") | {"data": nested(400)}  # the API server accepts it
    await cluster.create(STACKS, stack("deep", [deep]))
    stalled = await cluster.wait_condition(STACKS, "deep", "Stalled", "True", reason="TooDeep")
    assert "nested 401 levels deep" in condition(stalled, "Ready")["message"]

    # an internal error (here injected: rendering raises something unexpected, naming a server path)
    def broken(spec, extra=None):
        raise ValueError("cannot read /var/lib/stackyard/secret-path")

    monkeypatch.setattr(stacks, "render_stack", broken)
    caplog.set_level(logging.ERROR, "stackyard.controller.handlers")
    await cluster.create(STACKS, stack("defect", [configmap("a")]))
    failing = await cluster.wait_condition(STACKS, "defect", "Ready", "False", reason="InternalError")
    assert no_server_internals(condition(failing, "Ready")["message"]) and "ValueError" in condition(failing, "Ready")[
        "message"]
    events = await kube_events(cluster)
    assert all(no_server_internals(e["message"]) for e in about(events, "defect") + about(events, "deep")), events
    tracebacks = [r for r in caplog.records if r.exc_info and "defect" in r.getMessage()]
    assert len(tracebacks) == 1, "the traceback goes to the operator's log, once per object and kind of error"


async def test_a_stacks_counts_follow_its_targets_at_once_whoever_changes_them(operator, cluster):
    # created with (here: before) its Stack, as `kubectl apply -f examples/` does
    await cluster.create(AGENT_TARGETS, target("first", "web", agent="edge", cluster="eu-1"))
    await cluster.create(AGENTS, {"metadata": {"name": "a1", "labels": {"region": "eu"}}, "spec": {"clusterName": "c1"}})
    await cluster.create(AGENTS, {"metadata": {"name": "a2", "labels": {"region": "us"}}, "spec": {"clusterName": "c1"}})
    await cluster.create(STACKS, stack("web", [configmap("a")], rollout={"maxUnavailable": 1}))
    await cluster.create(AGENT_TARGETS, {"metadata": {"name": "eu"}, "spec": {
        "stackRef": {"name": "web"}, "agentSelector": {"matchLabels": {"region": "eu"}}}})

    async def total(expected: int):
        obj = await cluster.get(STACKS, "web")
        return obj if ((obj or {}).get("status") or {}).get("targets", {}).get("total") == expected else None

    await eventually(lambda: total(2), timeout=PROMPT)
    await cluster.patch(AGENTS, "a2", {"metadata": {"labels": {"region": "eu"}}})  # relabelled into the selection
    stack_obj = await eventually(lambda: total(3), timeout=PROMPT)
    rollout = stack_obj["status"]["rollout"]
    assert rollout["released"] >= 1, "a staged Stack releases to its first agents at once, not at the resync"
    await cluster.patch(AGENTS, "a2", {"metadata": {"labels": {"region": "us"}}})
    await eventually(lambda: total(2), timeout=PROMPT)


async def test_an_agent_name_longer_than_a_label_value_is_registered(operator, cluster, kube_server):
    name = "edge-" + "x" * 95  # 100 characters: more than a label value may hold, within what the CRD allows
    await cluster.create(AGENTS, {"metadata": {"name": name}, "spec": {"clusterName": "eu-1"}})
    ready = await cluster.wait_condition(AGENTS, name, "Ready", "True")
    secret = await cluster.client.get(SECRETS.path("default", f"{name}-pak"))
    assert secret["metadata"]["annotations"]["stackyard.dev/agent"] == name
    assert secret["metadata"]["labels"]["stackyard.dev/agent-uid"] == ready["metadata"]["uid"]
    # the emulator refuses what the API server refuses
    with pytest.raises(KubeError) as refused:
        await cluster.client.request("POST", SECRETS.path("default"), {
            "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s", "labels": {"x": "y" * 64}}})
    assert refused.value.status == 422


async def test_every_generation_ends_observed_even_when_no_handler_runs(kube_server, db_url, cluster):
    config = operator_config(db_url, kube_server, resync_interval=1.0)
    running = OperatorThread(kube_server, config).start()
    try:
        await cluster.create(STACKS, stack("web", [configmap("a", {"v": "A"})]))
        await cluster.wait_condition(STACKS, "web", "Ready", "True")
    finally:
        running.stop()
    # A -> B -> A while nobody watches: the spec ends where the last handled one was, so Kopf sees no diff
    for value in ("B", "A"):
        await cluster.patch(STACKS, "web", {"spec": {"resources": [configmap("a", {"v": value})]}})
    assert (await cluster.get(STACKS, "web"))["metadata"]["generation"] == 3
    running = OperatorThread(kube_server, config).start()
    try:
        observed = await cluster.wait_condition(STACKS, "web", "Ready", "True", timeout=10)
        assert observed["status"]["observedGeneration"] == 3
        # a forged record of Kopf's progress, then a change: the generation is still processed
        await cluster.client.request("PATCH", STACKS.path("default", "web") + "/status", {"status": {"kopf": {
            "progress": {"stack_changed": {"started": "2026-12-02T00:00:00.000000Z", "retries": 1, "success": True,
                                           "failure": False, "purpose": "update"}}}}},
            "application/merge-patch+json")
        await cluster.patch(STACKS, "web", {"spec": {"resources": [configmap("a", {"v": "C"})]}})
        changed = await cluster.wait_condition(STACKS, "web", "Ready", "True", timeout=10)
        assert changed["status"]["observedGeneration"] == 4
        assert changed["status"]["deploymentObject"]["sequenceId"] > observed["status"]["deploymentObject"]["sequenceId"]
    finally:
        running.stop()


async def test_status_written_by_someone_else_is_restored_from_the_store(kube_server, db_url, cluster, caplog):
    running = OperatorThread(kube_server, operator_config(db_url, kube_server, resync_interval=1.0)).start()
    try:
        await cluster.create(STACKS, stack("mine", [configmap("a")]))
        await cluster.create(STACKS, {"metadata": {"name": "theirs", "namespace": "other"},
                                      "spec": {"resources": [configmap("b")]}})
        mine = await cluster.wait_condition(STACKS, "mine", "Ready", "True")
        theirs = await cluster.wait_condition(STACKS, "theirs", "Ready", "True", namespace="other")
        await cluster.create(STACKS, stack("bad", [configmap("a"), configmap("a")]))
        await cluster.wait_condition(STACKS, "bad", "Stalled", "True")
        caplog.set_level(logging.ERROR)
        forged = {"stackId": theirs["metadata"]["uid"], "deploymentObject": {"sequenceId": 999999}}
        ready = {"type": "Ready", "status": "True", "reason": "Forged", "message": "all good",
                 "lastTransitionTime": "2026-12-02T00:00:00Z"}
        for name, status in (("mine", forged), ("bad", {"conditions": [ready]}),
                             ("mine", {"stackId": "not-a-uuid"})):
            await cluster.client.request("PATCH", STACKS.path("default", name) + "/status", {"status": status},
                                         "application/merge-patch+json")

        async def restored():
            obj = await cluster.get(STACKS, "mine")
            status = obj["status"]
            return status["stackId"] == mine["metadata"]["uid"] and (
                status["deploymentObject"] == mine["status"]["deploymentObject"])

        await eventually(restored, timeout=10)
        await cluster.wait_condition(STACKS, "bad", "Stalled", "True", timeout=10)
        assert condition(await cluster.get(STACKS, "bad"), "Ready")["status"] == "False"
        assert not [r for r in caplog.records if r.exc_info], "a forged status gives no traceback"
    finally:
        running.stop()


async def test_tenancy_reveals_nothing_and_a_stall_is_announced_once(operator, cluster, store):
    await cluster.create(AGENTS, {"metadata": {"name": "edge", "namespace": "ten-a"},
                                  "spec": {"clusterName": "eu-1", "allowedNamespaces": ["ten-b"]}})
    ready = await cluster.wait_condition(AGENTS, "edge", "Ready", "True", namespace="ten-a")
    await store.heartbeat(uuid.UUID(ready["metadata"]["uid"]))
    await cluster.create(STACKS, {"metadata": {"name": "web", "namespace": "ten-b"},
                                  "spec": {"resources": [configmap("a")]}})
    await cluster.create(AGENT_TARGETS, {"metadata": {"name": "t", "namespace": "ten-b"}, "spec": {
        "stackRef": {"name": "web"}, "agentName": "edge", "clusterName": "eu-1"}})
    bound = await cluster.wait_condition(AGENT_TARGETS, "t", "Ready", "True", namespace="ten-b")
    assert bound["status"]["agent"]["registered"] is True and bound["status"]["targetId"]

    # another tenant names the same agent: it learns no more than about an agent that does not exist
    await cluster.create(STACKS, {"metadata": {"name": "web", "namespace": "ten-c"},
                                  "spec": {"resources": [configmap("a")]}})
    await cluster.create(AGENT_TARGETS, {"metadata": {"name": "t", "namespace": "ten-c"}, "spec": {
        "stackRef": {"name": "web"}, "agentName": "edge", "clusterName": "eu-1"}})
    probe = await cluster.wait_condition(AGENT_TARGETS, "t", "Stalled", "True", reason="AgentNotPermitted",
                                         namespace="ten-c")
    assert probe["status"]["agent"] == {"registered": False}

    # the grant is revoked: the status path stalls it, says so once, and clears what is no longer true
    await cluster.patch(AGENTS, "edge", {"spec": {"allowedNamespaces": []}}, namespace="ten-a")
    revoked = await cluster.wait_condition(AGENT_TARGETS, "t", "Stalled", "True", reason="AgentNotPermitted",
                                           namespace="ten-b", timeout=PROMPT)
    status = revoked["status"]
    assert status["agent"] == {"registered": False}
    assert status.get("targetId") is None and status.get("deployment") is None and status.get("health") is None

    async def one_warning():
        found = [e for e in about(await kube_events(cluster, "ten-b"), "t") if e["reason"] == "AgentNotPermitted"]
        return found if len(found) == 1 and found[0]["type"] == "Warning" else None

    await eventually(one_warning, timeout=PROMPT)
    events = await kube_events(cluster, "ten-c")
    assert [e["reason"] for e in about(events, "t")] == ["AgentNotPermitted"], "no Logging or Error event besides"


async def test_an_agent_that_failed_to_apply_makes_its_stack_degraded(operator, cluster, store):
    agent = await cluster.create(AGENTS, {"metadata": {"name": "edge"}, "spec": {"clusterName": "eu-1"}})
    await cluster.create(STACKS, stack("web", [configmap("a")]))
    await cluster.create(AGENT_TARGETS, target("t", "web", agent="edge", cluster="eu-1"))
    ready = await cluster.wait_condition(STACKS, "web", "Ready", "True")
    await cluster.wait_condition(AGENTS, "edge", "Ready", "True")
    await cluster.wait_targeted("web", 1)  # the agent may report on it only once its target row exists
    row = await store.get_agent(uuid.UUID(agent["metadata"]["uid"]))
    do = uuid.UUID(ready["status"]["deploymentObject"]["id"])
    await store.record_events(row, [EventIn(do, "APPLY", "FAILURE", "attempt 1: Widget x: no kind Widget is served")])

    async def degraded():
        healthy = condition(await cluster.get(STACKS, "web"), "Healthy")
        return healthy if healthy and healthy["reason"] == "Degraded" else None

    healthy = await eventually(degraded, timeout=PROMPT)
    assert healthy["status"] == "False" and "failed to apply sequence 1" in healthy["message"]
