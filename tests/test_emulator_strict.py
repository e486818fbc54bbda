"""The emulator stores custom resources as the API server does: unknown fields pruned, bad values refused (422).

Every operator test runs against it, so a status field the code writes but the CRD lacks disappears there as
it would on a real cluster, and the test that reads it fails.
"""

from __future__ import annotations

import pytest

from .builders import configmap, stack
from .kubectl import KubeError
from .operator_harness import STACKS


async def test_unknown_fields_are_pruned_on_create_update_and_status_writes(cluster):
    body = stack("web", [configmap("a")])
    body["spec"]["surprise"] = {"x": 1}
    body["spec"]["rollout"] = {"pause": True, "unknownKnob": 3}
    body["status"] = {"stackId": "forged at create"}
    created = await cluster.create(STACKS, body)
    assert "surprise" not in created["spec"] and created["spec"]["rollout"] == {"pause": True}
    assert "status" not in created, "with the status subresource, a create's status is ignored"
    # embedded resources keep everything (x-kubernetes-preserve-unknown-fields)
    assert created["spec"]["resources"][0]["data"] == {"k": "v"}

    patched = await cluster.patch(STACKS, "web", {"spec": {"another": True, "description": "kept"}})
    assert "another" not in patched["spec"] and patched["spec"]["description"] == "kept"

    status = await cluster.client.request("PATCH", STACKS.path("default", "web") + "/status", {"status": {
        "stackId": "s", "notInTheCrd": 1, "targets": {"total": 1, "bogus": 2}, "kopf": {"anything": {"goes": 1}}}},
        "application/merge-patch+json")
    assert status["status"] == {"stackId": "s", "targets": {"total": 1}, "kopf": {"anything": {"goes": 1}}}


@pytest.mark.parametrize("status,field", [
    ({"targets": {"total": "three"}}, "status.targets.total"),
    ({"agents": [{"agentName": "a", "state": "Exploded"}]}, "status.agents.0.state"),
    ({"conditions": [{"type": "Ready"}]}, "status.conditions.0"),
    ({"deploymentObject": {"sequenceId": 1.5}}, "status.deploymentObject.sequenceId"),
])
async def test_values_of_the_wrong_type_or_outside_their_enum_are_refused(cluster, status, field):
    await cluster.create(STACKS, stack("web", [configmap("a")]))
    with pytest.raises(KubeError) as refused:
        await cluster.client.request("PATCH", STACKS.path("default", "web") + "/status", {"status": status},
                                     "application/merge-patch+json")
    assert refused.value.status == 422 and field in str(refused.value), str(refused.value)
