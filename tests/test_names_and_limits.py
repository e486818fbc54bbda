"""Input the store or the API server cannot take ends Stalled with a reason, once, instead of retrying forever."""

from __future__ import annotations

import pytest
from kubernetes.client.exceptions import ApiException
from kubernetes.dynamic.exceptions import api_exception

from stackyard.controller.running import as_invalid_spec

from .builders import configmap, stack
from .crd_schema import validate
from .operator_harness import AGENTS, STACKS, condition

LONGEST_NAME = "s" * 253  # what Kubernetes allows for an object name


async def test_a_stack_with_the_longest_name_kubernetes_allows_is_stored(operator, cluster, db):
    await cluster.create(STACKS, stack(LONGEST_NAME, [configmap("a")]))
    ready = await cluster.wait_condition(STACKS, LONGEST_NAME, "Ready", "True")
    assert ready["status"]["deploymentObject"]["sequenceId"] >= 1
    assert db.execute("SELECT name FROM stacks").fetchone()[0] == f"default/{LONGEST_NAME}"


async def test_values_the_database_cannot_hold_stall_with_a_reason(operator, cluster):
    await cluster.create(STACKS, {"metadata": {"name": "nul"}, "spec": {"description": "a\u0000b", "resources": []}})
    stalled = await cluster.wait_condition(STACKS, "nul", "Stalled", "True", reason="ValueNotStorable")
    assert "NUL" in condition(stalled, "Ready")["message"] or "0x00" in condition(stalled, "Ready")["message"]


async def test_an_agent_whose_secret_name_would_be_too_long_stalls(operator, cluster, kube_server):
    name = "a" * 250
    await cluster.create(AGENTS, {"metadata": {"name": name}, "spec": {"clusterName": "eu-1"}})
    stalled = await cluster.wait_condition(AGENTS, name, "Stalled", "True", reason="NameTooLong")
    assert condition(stalled, "Ready")["status"] == "False"
    assert kube_server.emulator.count("PATCH", "/secrets/") == 0, "no Secret write was attempted"


def test_the_crd_refuses_agent_names_that_leave_no_room_for_the_secret():
    agent = {"apiVersion": "stackyard.dev/v1alpha1", "kind": "Agent", "metadata": {"name": "a" * 250, "namespace": "x"},
             "spec": {"clusterName": "eu-1"}}
    assert any("249" in e for e in validate(agent))
    agent["metadata"]["name"] = "a" * 249
    assert validate(agent) == []


@pytest.mark.parametrize("status,permanent", [(400, True), (403, True), (404, True), (422, True), (409, False),
                                              (429, False), (500, False), (503, False), (0, False)])
def test_api_server_answers_other_than_conflict_and_throttling_are_permanent(status, permanent):
    error = api_exception(ApiException(status=status, reason="Reason"))
    assert (as_invalid_spec(error) is not None) is permanent
