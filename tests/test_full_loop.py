"""The full loop: operator, API, PostgreSQL, and an agent applying into a (second, emulated) target cluster."""

from __future__ import annotations

import base64


from .emulator import ROOT, rules_of
from .loop_harness import (
    NAMESPACES,
    agent_entry,
    configmap,
    setup_loop,
    start_agent,
    wait_applied,
)
from .operator_harness import AGENT_TARGETS, AGENTS, STACKS, eventually


async def test_full_loop(operator_api, cluster, target, tmp_path, db):
    target_server, target_view = target
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "apps"}}
    pak_file = await setup_loop(cluster, [namespace, configmap("a", {"v": "1"}), configmap("b")], tmp_path)
    agent = await start_agent(operator_api.url, pak_file, target_server)
    try:
        # 1. the agent applies the objects; the Stack shows it Applied at the right sequence
        stack = await wait_applied(cluster, "web")
        seq1 = stack["status"]["deploymentObject"]["sequenceId"]
        stack_id = stack["metadata"]["uid"]
        objects = await target_view.configmaps()
        assert set(objects) == {"a", "b"}
        a = objects["a"]
        assert a["metadata"]["labels"]["stackyard.dev/stack"] == stack_id
        assert a["metadata"]["annotations"]["stackyard.dev/checksum"] == stack["status"]["deploymentObject"]["checksum"]
        assert a["metadata"]["annotations"]["stackyard.dev/deployment-object-id"] == stack["status"]["deploymentObject"]["id"]
        assert await target_view.client.get_or_none(NAMESPACES.path(None, "apps")) is not None
        assert stack["status"]["targets"] == {"total": 1, "applied": 1, "failed": 0, "pending": 0, "healthy": 1, "progressing": 0,
                                                   "degraded": 0}

        async def agent_active():
            return (await cluster.get(AGENTS, "edge"))["status"].get("phase") == "Active"

        await eventually(agent_active)

        async def target_applied():
            status = (await cluster.get(AGENT_TARGETS, "web-edge")).get("status") or {}
            return status.get("deployment", {}).get("state") == "Applied" and status["agent"]["registered"]

        await eventually(target_applied)

        # 2. a change reaches the target within 3 s (long-poll + NOTIFY) and the dropped object is pruned
        await cluster.patch(STACKS, "web", {"spec": {"resources": [namespace, configmap("a", {"v": "2"})]}})
        stack = await wait_applied(cluster, "web", timeout=3.0)  # the deadline of the issue
        assert stack["status"]["deploymentObject"]["sequenceId"] > seq1
        objects = await target_view.configmaps()
        assert set(objects) == {"a"} and objects["a"]["data"] == {"v": "2"}

        # 3. an object the target cluster rejects: FAILURE, Failed in the status, retried
        widget = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w", "namespace": "apps"}}
        await cluster.patch(STACKS, "web", {"spec": {"resources": [namespace, configmap("a", {"v": "2"}), widget]}})

        async def failed():
            entry = agent_entry(await cluster.get(STACKS, "web"))
            return entry if entry and entry["state"] == "Failed" else None

        entry = await eventually(failed)
        assert "Widget" in entry["message"]

        async def failure_event():
            listing = await cluster.client.get("/api/v1/namespaces/default/events")
            return [e for e in listing["items"] if e["reason"] == "ApplyFailed" and e["involvedObject"]["name"] == "web"]

        (event,) = await eventually(failure_event)
        assert event["type"] == "Warning" and "Widget" in event["message"] and "edge" in event["message"]
        stack = await cluster.get(STACKS, "web")
        assert stack["status"]["targets"]["failed"] == 1

        async def retried():
            return db.execute(
                "SELECT count(*) >= 3 FROM agent_events WHERE status = 'FAILURE'"
            ).fetchone()[0]

        await eventually(retried)
        await cluster.patch(STACKS, "web", {"spec": {"resources": [namespace, configmap("a", {"v": "3"})]}})
        await wait_applied(cluster, "web")

        # 4. deleting the AgentTarget: the agent removes that stack's objects
        await cluster.delete(AGENT_TARGETS, "web-edge")

        async def removed():
            namespace_gone = await target_view.client.get_or_none(NAMESPACES.path(None, "apps")) is None
            return namespace_gone and await target_view.configmaps() == {}

        await eventually(removed)

        # 5. target again, then delete the Stack: the deletion marker reaches the agent and the objects go
        await cluster.create(AGENT_TARGETS, {"metadata": {"name": "web-edge"},
                                             "spec": {"stackRef": {"name": "web"}, "agentName": "edge", "clusterName": "eu-1"}})
        await eventually(lambda: _has(target_view, "a"))
        await cluster.delete(STACKS, "web")
        await eventually(removed)

        async def marker_reported():
            return db.execute(
                "SELECT count(*) FROM agent_events e JOIN deployment_objects d ON d.id = e.deployment_object_id"
                " WHERE d.is_deletion_marker AND e.status = 'SUCCESS'"
            ).fetchone()[0] == 1

        await eventually(marker_reported)
    finally:
        await agent.stop()


async def _has(target_view, name: str) -> bool:
    return name in await target_view.configmaps()


async def test_agent_restart_keeps_its_inventory(operator_api, cluster, target, tmp_path, db):
    target_server, target_view = target
    pak_file = await setup_loop(cluster, [configmap("a"), configmap("b")], tmp_path)
    agent = await start_agent(operator_api.url, pak_file, target_server)
    try:
        await wait_applied(cluster, "web")
        before = {name: obj["metadata"]["resourceVersion"] for name, obj in (await target_view.configmaps()).items()}
    finally:
        await agent.stop()
    applies = db.execute("SELECT count(*) FROM agent_events WHERE event_type = 'APPLY'").fetchone()[0]

    restarted = await start_agent(operator_api.url, pak_file, target_server)
    try:
        await eventually(lambda: _synced(restarted))
        after = {name: obj["metadata"]["resourceVersion"] for name, obj in (await target_view.configmaps()).items()}
        assert after == before, "nothing re-created, nothing deleted"
        assert db.execute("SELECT count(*) FROM agent_events WHERE event_type = 'APPLY'").fetchone()[0] == applies

        # a change after the restart still prunes what the first run applied (the inventory survived)
        await cluster.patch(STACKS, "web", {"spec": {"resources": [configmap("a")]}})
        await wait_applied(cluster, "web")
        assert set(await target_view.configmaps()) == {"a"}
    finally:
        await restarted.stop()


async def _synced(running) -> bool:
    return running.agent.ready.is_set()


async def test_stack_recreated_under_the_same_name_does_not_blink(operator_api, cluster, target, tmp_path):
    target_server, target_view = target
    pak_file = await setup_loop(cluster, [configmap("a")], tmp_path)
    agent = await start_agent(operator_api.url, pak_file, target_server, deletion_grace=10.0)
    try:
        await wait_applied(cluster, "web")
        first_uid = (await target_view.configmaps())["a"]["metadata"]["uid"]
        await cluster.delete(STACKS, "web")
        await cluster.wait_gone(STACKS, "web")
        await cluster.create(STACKS, {"metadata": {"name": "web"}, "spec": {"resources": [configmap("a")]}})
        await wait_applied(cluster, "web", timeout=8)
        current = (await target_view.configmaps())["a"]
        assert current["metadata"]["uid"] == first_uid, "the object was never deleted"
        new_uid = (await cluster.get(STACKS, "web"))["metadata"]["uid"]
        assert current["metadata"]["labels"]["stackyard.dev/stack"] == new_uid

        async def old_inventory_gone():
            listing = await target_view.client.get("/api/v1/namespaces/stackyard-system/configmaps")
            return [i["metadata"]["name"] for i in listing["items"]] == [f"stackyard-inventory-{new_uid}"]

        await eventually(old_inventory_gone, timeout=20)
        assert "a" in await target_view.configmaps(), "still there after the grace period"
    finally:
        await agent.stop()


async def test_bad_yaml_is_a_failure_event_not_a_crash(operator_api, cluster, target, tmp_path, db, store):
    target_server, _ = target
    pak_file = await setup_loop(cluster, [configmap("a")], tmp_path)
    agent = await start_agent(operator_api.url, pak_file, target_server)
    try:
        stack = await wait_applied(cluster, "web")
        import uuid

        await store.emit_deployment_object(uuid.UUID(stack["metadata"]["uid"]), "kind: [unclosed\n")

        async def failure():
            row = db.execute("SELECT message FROM agent_events WHERE status = 'FAILURE' LIMIT 1").fetchone()
            return row[0] if row else None

        message = await eventually(failure)
        assert "YAML" in message
        assert not agent.task.done()
    finally:
        await agent.stop()


async def test_text_outside_the_bmp_is_applied_as_kubectl_would(operator_api, cluster, target, tmp_path):
    target_server, target_view = target
    text = {"emoji": "ship it 🚀😀", "cjk": "部署对象", "combining": "e\u0301 n\u0303", "rtl": "שלום"}
    binary = base64.b64encode(bytes(range(1, 256))).decode()  # a binary Secret (no NUL byte)
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "blob", "namespace": "apps"},
              "type": "Opaque", "data": {"blob": binary}}
    pak_file = await setup_loop(cluster, [configmap("u", text), secret], tmp_path)
    agent = await start_agent(operator_api.url, pak_file, target_server)
    try:
        await wait_applied(cluster, "web")
        assert (await target_view.configmaps())["u"]["data"] == text
        applied = await target_view.client.get("/api/v1/namespaces/apps/secrets/blob")
        assert applied["data"] == {"blob": binary}
    finally:
        await agent.stop()


async def test_stacks_that_ship_rbac_apply_under_the_agents_own_rbac(operator_api, cluster, target, tmp_path):
    """The target emulator enforces RBAC escalation prevention for the rules manifests/agent/rbac.yaml grants."""
    target_server, _view = target
    target_server.emulator.held_rules = rules_of(ROOT / "manifests/agent/rbac.yaml")
    reader = [{"apiGroups": [""], "resources": ["pods", "configmaps"], "verbs": ["get", "list", "watch"]}]
    role = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": "reader", "namespace": "apps"}, "rules": reader}
    cluster_role = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                    "metadata": {"name": "stackyard-test-reader"}, "rules": reader}
    binding = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
               "metadata": {"name": "reader", "namespace": "apps"},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "reader"},
               "subjects": [{"kind": "ServiceAccount", "name": "default", "namespace": "apps"}]}
    pak_file = await setup_loop(cluster, [role, cluster_role, binding], tmp_path)
    agent = await start_agent(operator_api.url, pak_file, target_server)
    try:
        stack = await wait_applied(cluster, "web")
        assert agent_entry(stack)["state"] == "Applied"
        assert await target_server_has(target_server, "/apis/rbac.authorization.k8s.io/v1/namespaces/apps/roles/reader")
    finally:
        await agent.stop()


async def target_server_has(server, path: str) -> bool:
    import kopf

    from .kubectl import KubeClient

    async with KubeClient(kopf.ConnectionInfo(server=server.url, insecure=True)) as client:
        return await client.get_or_none(path) is not None


WIDGETS_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.example.com"},
    "spec": {"group": "example.com", "scope": "Namespaced",
             "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "listKind": "WidgetList"},
             "versions": [{"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": {
                 "type": "object", "properties": {"spec": {"type": "object", "properties": {
                     "size": {"type": "integer"}}}}}}}]},
}


async def test_a_stack_that_ships_a_crd_and_its_objects_applies_both(operator_api, cluster, target, tmp_path):
    """The agent applies a CRD, waits until the target cluster serves its kind (Established, discovery again,
    off the event loop) and then applies the objects of that kind, in one sync."""
    target_server, target_view = target
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "apps"}}
    widget = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w", "namespace": "apps"},
              "spec": {"size": 3}}
    pak_file = await setup_loop(cluster, [namespace, widget, WIDGETS_CRD], tmp_path)
    agent = await start_agent(operator_api.url, pak_file, target_server)
    try:
        await wait_applied(cluster, "web")
        crd = await target_view.client.get(
            "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/widgets.example.com")
        assert {c["type"]: c["status"] for c in crd["status"]["conditions"]}["Established"] == "True"
        live = await target_view.client.get("/apis/example.com/v1/namespaces/apps/widgets/w")
        assert live["spec"] == {"size": 3}
    finally:
        await agent.stop()
