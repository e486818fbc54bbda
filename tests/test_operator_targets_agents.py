"""AgentTarget and Agent resources through a real Kopf operator loop."""

from __future__ import annotations

import base64
import uuid

from stackyard import pak

from .builders import configmap, stack, target
from .kubectl import SECRETS
from .operator_harness import AGENT_TARGETS, AGENTS, STACKS, condition, eventually


async def test_agent_target_before_its_stack_becomes_ready_once_the_stack_exists(operator, cluster, db):
    await cluster.create(AGENT_TARGETS, target("web-to-edge", "web"))
    waiting = await cluster.wait_condition(AGENT_TARGETS, "web-to-edge", "Ready", "False", reason="StackNotFound")
    assert condition(waiting, "Reconciling")["status"] == "True"
    assert condition(waiting, "Stalled") is None
    assert db.execute("SELECT count(*) FROM agent_targets").fetchone()[0] == 0

    await cluster.create(STACKS, stack("web", [configmap("a")]))
    ready = await cluster.wait_condition(AGENT_TARGETS, "web-to-edge", "Ready", "True", timeout=20)
    stack_obj = await cluster.get(STACKS, "web")
    assert ready["status"]["stackId"] == stack_obj["metadata"]["uid"]
    assert ready["status"]["agent"] == {"registered": False}
    assert ready["status"]["deployment"]["state"] == "Pending"
    rows = db.execute("SELECT stack_id, agent_name, cluster_name FROM agent_targets").fetchall()
    assert rows == [(uuid.UUID(stack_obj["metadata"]["uid"]), "edge-1", "eu-1")]


async def test_agent_target_update_and_delete(operator, cluster, db):
    await cluster.create(STACKS, stack("web", [configmap("a")]))
    await cluster.create(AGENT_TARGETS, target("t", "web"))
    await cluster.wait_condition(AGENT_TARGETS, "t", "Ready", "True")
    await cluster.patch(AGENT_TARGETS, "t", {"spec": {"agentName": "edge-2"}})

    async def moved():
        return db.execute("SELECT agent_name FROM agent_targets").fetchall() == [("edge-2",)]

    await eventually(moved)
    await cluster.delete(AGENT_TARGETS, "t")
    await cluster.wait_gone(AGENT_TARGETS, "t")
    assert db.execute("SELECT count(*) FROM agent_targets").fetchone()[0] == 0


async def test_deleted_stack_keeps_its_target_row_and_a_recreated_stack_gets_a_new_one(operator, cluster, db):
    await cluster.create(STACKS, stack("web", [configmap("a")]))
    await cluster.create(AGENT_TARGETS, target("t", "web"))
    await cluster.wait_condition(AGENT_TARGETS, "t", "Ready", "True")
    old_uid = (await cluster.get(STACKS, "web"))["metadata"]["uid"]
    await cluster.delete(STACKS, "web")
    await cluster.wait_gone(STACKS, "web")
    await cluster.create(STACKS, stack("web", [configmap("a")]))
    new_obj = await cluster.wait_condition(STACKS, "web", "Ready", "True")

    async def both_rows():
        rows = {str(r[0]) for r in db.execute("SELECT stack_id FROM agent_targets")}
        return rows == {old_uid, new_obj["metadata"]["uid"]}

    await eventually(both_rows, timeout=40)
    marker = db.execute(
        "SELECT count(*) FROM deployment_objects WHERE stack_id = %s AND is_deletion_marker", (uuid.UUID(old_uid),)
    ).fetchone()[0]
    assert marker == 1


async def read_pak(cluster, name: str) -> str | None:
    secret = await cluster.client.get_or_none(SECRETS.path("default", f"{name}-pak"))
    if not secret:
        return None
    return base64.b64decode(secret["data"]["pak"]).decode()


async def test_agent_gets_a_pak_that_verifies_and_rotation_invalidates_the_old_key(operator, cluster, store):
    await cluster.create(AGENTS, {"metadata": {"name": "edge-1"}, "spec": {"clusterName": "eu-1", "labels": ["region=eu"]}})
    obj = await cluster.wait_condition(AGENTS, "edge-1", "Ready", "True")
    agent_id = uuid.UUID(obj["status"]["agentId"])
    assert obj["status"]["phase"] == "Pending"
    token = await read_pak(cluster, "edge-1")
    assert pak.parse(token) is not None and token.startswith("sy_")
    agent = await store.get_agent(agent_id)
    assert (agent.name, agent.cluster_name) == ("edge-1", "eu-1")
    assert pak.verify(token, agent.pak_hash)
    assert pak.parse(token).secret not in (agent.pak_hash or ""), "only a hash is stored"
    secret = await cluster.client.get(SECRETS.path("default", "edge-1-pak"))
    owner = secret["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["uid"], owner["controller"]) == ("Agent", str(agent_id), True)

    # a restart-like re-reconcile (metadata change) keeps the key
    await cluster.patch(AGENTS, "edge-1", {"spec": {"labels": ["region=eu", "tier=edge"]}})
    await eventually(lambda: _labels(store, agent_id, ["region=eu", "tier=edge"]))
    assert await read_pak(cluster, "edge-1") == token

    await cluster.patch(AGENTS, "edge-1", {"metadata": {"annotations": {"stackyard.dev/rotate-pak": "2026-11-22"}}})

    async def rotated():
        new = await read_pak(cluster, "edge-1")
        return new if new and new != token else None

    new_token = await eventually(rotated)
    agent = await store.get_agent(agent_id)
    assert pak.verify(new_token, agent.pak_hash)
    assert not pak.verify(token, agent.pak_hash)
    assert await store.agent_by_pak_hash(pak.parse(token).secret_hash) is None


async def _labels(store, agent_id, expected) -> bool:
    return (await store.agent_metadata(agent_id))[0] == expected


async def test_agent_phase_follows_heartbeats_and_delete_soft_deletes(operator, cluster, store, db):
    await cluster.create(AGENTS, {"metadata": {"name": "edge-1"}, "spec": {"clusterName": "eu-1"}})
    obj = await cluster.wait_condition(AGENTS, "edge-1", "Ready", "True")
    agent_id = uuid.UUID(obj["status"]["agentId"])
    await store.heartbeat(agent_id)

    async def phase(expected):
        obj = await cluster.get(AGENTS, "edge-1")
        return obj["status"].get("phase") == expected and obj

    active = await eventually(lambda: phase("Active"))
    assert active["status"]["lastHeartbeat"]
    # the test config uses a 1 s heartbeat interval: 3 missed beats make it Stale
    await eventually(lambda: phase("Stale"), timeout=15)

    await cluster.delete(AGENTS, "edge-1")
    await cluster.wait_gone(AGENTS, "edge-1")
    assert db.execute("SELECT deleted_at IS NOT NULL FROM agents WHERE id = %s", (agent_id,)).fetchone()[0]


async def test_two_agents_claiming_one_name_in_one_cluster_stall_the_second(operator, cluster):
    await cluster.create(AGENTS, {"metadata": {"name": "a"}, "spec": {"clusterName": "eu-1", "agentName": "edge"}})
    await cluster.wait_condition(AGENTS, "a", "Ready", "True")
    await cluster.create(AGENTS, {"metadata": {"name": "b"}, "spec": {"clusterName": "eu-1", "agentName": "edge"}})
    stalled = await cluster.wait_condition(AGENTS, "b", "Stalled", "True")
    assert condition(stalled, "Ready")["reason"] == "AgentNameConflict"


async def test_an_agent_cannot_be_renamed_by_setting_agent_name_later(operator, cluster, db):
    # The CRD's CEL rule refuses this on a real API server; the emulator does not run CEL,
    # so this checks the operator's own guard (the store refuses the rename).
    await cluster.create(AGENTS, {"metadata": {"name": "edge-1"}, "spec": {"clusterName": "eu-1"}})
    await cluster.wait_condition(AGENTS, "edge-1", "Ready", "True")
    await cluster.patch(AGENTS, "edge-1", {"spec": {"agentName": "other"}})
    stalled = await cluster.wait_condition(AGENTS, "edge-1", "Stalled", "True", reason="AgentNameImmutable")
    assert condition(stalled, "Ready")["status"] == "False"
    assert db.execute("SELECT name FROM agents").fetchall() == [("edge-1",)]


async def test_a_deleted_agent_target_is_not_bound_again_by_the_status_path(store, db):
    """Deleting an AgentTarget removes its rows while the object (with its deletionTimestamp) is still indexed;
    the status path then sees its Stack without rows for it, and must not bind it again."""
    from stackyard.controller.targets import agent_target_status_patch

    from .api_harness import make_stack

    await make_stack(store, "default/web")
    body = {"metadata": {"uid": str(uuid.uuid4()), "namespace": "default", "name": "t", "generation": 1,
                         "deletionTimestamp": "2026-11-23T12:00:00Z"},
            "spec": {"stackRef": {"name": "web"}, "agentName": "edge-1", "clusterName": "eu-1"}}
    assert await agent_target_status_patch(store, body, {}) is None
    assert db.execute("SELECT count(*) FROM agent_targets").fetchone()[0] == 0
    del body["metadata"]["deletionTimestamp"]  # the same object alive: the status path binds it
    assert await agent_target_status_patch(store, body, {}) is not None
    assert db.execute("SELECT count(*) FROM agent_targets").fetchone()[0] == 1
