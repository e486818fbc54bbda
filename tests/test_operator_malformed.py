"""Twenty malformed objects: the CRD schema rejects some; the rest end Stalled, and the operator carries on.

kmock does not validate schemas, so the schema-forbidden objects are checked
against the CRD schema here; the schema-valid ones go through the operator.
"""

from __future__ import annotations

import copy

import pytest

from .builders import configmap
from .crd_schema import validate
from .operator_harness import AGENT_TARGETS, AGENTS, STACKS, condition

API = "stackyard.dev/v1alpha1"


def stack_obj(name: str, spec) -> dict:
    obj = {"apiVersion": API, "kind": "Stack", "metadata": {"name": name, "namespace": "default"}}
    if spec is not None:
        obj["spec"] = spec
    return obj


def target_obj(name: str, spec: dict) -> dict:
    return {"apiVersion": API, "kind": "AgentTarget", "metadata": {"name": name, "namespace": "default"}, "spec": spec}


def agent_obj(name: str, spec: dict) -> dict:
    return {"apiVersion": API, "kind": "Agent", "metadata": {"name": name, "namespace": "default"}, "spec": spec}


GOOD_TARGET = {"stackRef": {"name": "web"}, "agentName": "edge", "clusterName": "eu-1"}

SCHEMA_FORBIDS = {
    "resources-not-a-list": stack_obj("s1", {"resources": "kind: ConfigMap"}),
    "resource-without-kind": stack_obj("s2", {"resources": [{"apiVersion": "v1", "metadata": {"name": "a"}}]}),
    "resource-without-name": stack_obj("s3", {"resources": [{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {}}]}),
    "empty-label": stack_obj("s4", {"labels": [""]}),
    "annotation-not-a-string": stack_obj("s5", {"annotations": {"replicas": 3}}),
    "description-too-long": stack_obj("s6", {"description": "x" * 5000}),
    "too-many-resources": stack_obj("s7", {"resources": [configmap(f"c{i}") for i in range(501)]}),
    "no-spec": stack_obj("s8", None),
    "target-without-stackref": target_obj("t1", {"agentName": "edge", "clusterName": "eu-1"}),
    "target-agent-uppercase": target_obj("t2", {**GOOD_TARGET, "agentName": "Edge"}),
    "target-cluster-empty": target_obj("t3", {**GOOD_TARGET, "clusterName": ""}),
    "agent-without-cluster": agent_obj("a1", {"agentName": "edge"}),
    "agent-name-underscore": agent_obj("a2", {"clusterName": "eu-1", "agentName": "edge_1"}),
    "target-both-forms": target_obj("t4", {**GOOD_TARGET, "agentSelector": {"matchLabels": {"region": "eu"}}}),
    "target-neither-form": target_obj("t5", {"stackRef": {"name": "web"}}),
    "target-name-without-cluster": target_obj("t6", {"stackRef": {"name": "web"}, "agentName": "edge"}),
    "selector-in-without-values": target_obj("t7", {"stackRef": {"name": "web"}, "agentSelector": {
        "matchExpressions": [{"key": "region", "operator": "In", "values": []}]}}),
    "selector-unknown-operator": target_obj("t8", {"stackRef": {"name": "web"}, "agentSelector": {
        "matchExpressions": [{"key": "region", "operator": "Near"}]}}),
    "rollout-pause-not-boolean": stack_obj("s9", {"rollout": {"pause": "yes"}}),
}

# (object, the reason its Stalled condition carries)
OPERATOR_STALLS = {
    "apiversion-with-two-slashes": (
        stack_obj("bad-apiversion", {"resources": [{"apiVersion": "a/b/c", "kind": "X", "metadata": {"name": "x"}}]}),
        "InvalidResource",
    ),
    "resource-name-not-dns": (stack_obj("bad-name", {"resources": [configmap("Bad_Name")]}), "InvalidResource"),
    "resource-namespace-not-dns": (
        stack_obj("bad-namespace", {"resources": [configmap("a", namespace="UPPER")]}),
        "InvalidResource",
    ),
    "duplicate-resources": (stack_obj("dupes", {"resources": [configmap("a"), configmap("a", {"x": "y"})]}), "DuplicateResource"),
    "empty-apiversion": (
        stack_obj("empty-apiversion", {"resources": [{"apiVersion": "/", "kind": "ConfigMap", "metadata": {"name": "a"}}]}),
        "InvalidResource",
    ),
    "rollout-max-unavailable-zero": (stack_obj("rollout-zero", {"rollout": {"maxUnavailable": 0}}), "InvalidRollout"),
    "rollout-max-unavailable-over-100-percent": (
        stack_obj("rollout-150", {"rollout": {"maxUnavailable": "150%"}}), "InvalidRollout",
    ),
    "agent-name-taken": (agent_obj("edge-copy", {"clusterName": "eu-1", "agentName": "edge"}), "AgentNameConflict"),
    "agent-of-another-namespace": (
        target_obj("web-remote", {"stackRef": {"name": "web"}, "agentName": "remote", "clusterName": "eu-1"}),
        "AgentNotPermitted",
    ),
}


@pytest.mark.parametrize("name", sorted(SCHEMA_FORBIDS))
def test_schema_rejects(name):
    assert validate(SCHEMA_FORBIDS[name]) != []


def test_schema_rejects_changing_an_agents_cluster():
    old = agent_obj("a", {"clusterName": "eu-1"})
    new = copy.deepcopy(old)
    new["spec"]["clusterName"] = "us-1"
    assert validate(new) == []
    assert any("immutable" in e for e in validate(new, old))


async def test_schema_valid_malformed_objects_end_stalled_and_the_operator_carries_on(operator, cluster):
    for obj, _ in OPERATOR_STALLS.values():
        assert validate(obj) == [], f"{obj['metadata']['name']} must pass the schema to reach the operator"
    # the objects that the conflicts collide with
    await cluster.create(STACKS, {"metadata": {"name": "web"}, "spec": {"resources": [configmap("a")]}})
    await cluster.create(AGENTS, {"metadata": {"name": "edge"}, "spec": {"clusterName": "eu-1"}})
    await cluster.create(AGENTS, {"metadata": {"name": "remote", "namespace": "other"}, "spec": {"clusterName": "eu-1"}})
    await cluster.wait_condition(AGENTS, "remote", "Ready", "True", namespace="other")
    await cluster.create(AGENT_TARGETS, {"metadata": {"name": "web-edge"}, "spec": GOOD_TARGET})
    await cluster.wait_condition(AGENT_TARGETS, "web-edge", "Ready", "True")
    await cluster.wait_condition(AGENTS, "edge", "Ready", "True")

    resources = {"Stack": STACKS, "Agent": AGENTS, "AgentTarget": AGENT_TARGETS}
    for obj, _ in OPERATOR_STALLS.values():
        await cluster.create(resources[obj["kind"]], {"metadata": {"name": obj["metadata"]["name"]}, "spec": obj["spec"]})
    for obj, reason in OPERATOR_STALLS.values():
        stalled = await cluster.wait_condition(resources[obj["kind"]], obj["metadata"]["name"], "Stalled", "True")
        ready = condition(stalled, "Ready")
        assert (ready["status"], ready["reason"]) == ("False", reason)
        assert ready["message"]
        assert condition(stalled, "Stalled")["reason"] == reason

    # a good object afterwards is reconciled as usual
    await cluster.create(STACKS, {"metadata": {"name": "after"}, "spec": {"resources": [configmap("z")]}})
    await cluster.wait_condition(STACKS, "after", "Ready", "True")

    # fixing a stalled object's spec recovers it without a restart
    await cluster.patch(STACKS, "dupes", {"spec": {"resources": [configmap("a")]}})
    fixed = await cluster.wait_condition(STACKS, "dupes", "Ready", "True")
    assert condition(fixed, "Stalled") is None
