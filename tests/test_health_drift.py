"""Health and drift through the whole loop: operator, API, PostgreSQL, and an agent on an emulated target cluster.

The emulator runs no controllers, so the test plays the Deployment controller: it writes the Deployment's
status (through the status subresource, as kube-controller-manager does) and the agent's kstatus rules read it.
"""

from __future__ import annotations


from .kubectl import ApiResource
from .loop_harness import CONFIGMAPS, agent_entry, configmap, setup_loop, start_agent, wait_applied
from .operator_harness import AGENT_TARGETS, STACKS, condition, eventually

DEPLOYMENTS = ApiResource("apps/v1", "Deployment", "deployments", True)
AVAILABLE = {"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable"}


def deployment(name: str = "web") -> dict:
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": "apps"},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}},
                                  "spec": {"containers": [{"name": "web", "image": "nginx:1.27"}]}}}}


async def set_deployment_status(view, status: dict) -> None:
    live = await view.client.get(DEPLOYMENTS.path("apps", "web"))
    status = {"observedGeneration": live["metadata"]["generation"], **status}
    await view.client.request("PATCH", DEPLOYMENTS.path("apps", "web") + "/status", {"status": status},
                              "application/merge-patch+json", params={"fieldManager": "kube-controller-manager"})


async def health_events(db) -> list[tuple[str, str]]:
    return [(row[0]["health"], row[1]) for row in db.execute(
        "SELECT details, status FROM agent_events WHERE event_type = 'HEALTH' ORDER BY created_at").fetchall()]


async def test_health_follows_the_deployment_from_progressing_to_healthy_to_degraded(operator_api, cluster, target, tmp_path,
                                                                                    db):
    target_server, view = target
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "apps"}}
    pak_file = await setup_loop(cluster, [namespace, configmap("settings"), deployment()], tmp_path)
    agent = await start_agent(operator_api.url, pak_file, target_server, resync_interval=1.0, health_poll_max=0.5)
    try:
        await wait_applied(cluster, "web")

        async def target_health(expected: str):
            obj = await cluster.get(AGENT_TARGETS, "web-edge")
            return obj if (obj.get("status") or {}).get("health") == expected else None

        progressing = await eventually(lambda: target_health("Progressing"))
        assert progressing["status"]["unhealthy"][0]["message"] == "Updated: 0/2"
        stack = await cluster.get(STACKS, "web")
        assert condition(stack, "Healthy")["status"] == "False" and condition(stack, "Healthy")["reason"] == "Progressing"
        assert condition(stack, "Ready")["status"] == "True", "Ready keeps its meaning: stored"

        await set_deployment_status(view, {"replicas": 2, "updatedReplicas": 2, "readyReplicas": 2,
                                           "availableReplicas": 2, "conditions": [AVAILABLE]})
        await eventually(lambda: target_health("Healthy"))

        async def stack_healthy():
            obj = await cluster.get(STACKS, "web")
            healthy = condition(obj, "Healthy")
            return obj if healthy and healthy["status"] == "True" and obj["status"]["targets"]["healthy"] == 1 else None

        stack = await eventually(stack_healthy)
        assert agent_entry(stack)["health"] == "Healthy"

        await set_deployment_status(view, {"updatedReplicas": 1, "availableReplicas": 1, "conditions": [
            {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
             "message": 'ReplicaSet "web-7c9" has timed out progressing.'}]})
        degraded = await eventually(lambda: target_health("Degraded"))
        assert "Progress deadline exceeded" in degraded["status"]["unhealthy"][0]["message"]
        stack = await eventually(lambda: _healthy_reason(cluster, "Degraded"))
        assert "Progress deadline exceeded" in agent_entry(stack)["healthMessage"]

        polls = agent.agent.metrics.health_checks_total._value.get()
        await eventually(lambda: _more_checks(agent, polls + 3))
        assert [h for h, _ in await health_events(db)] == ["Progressing", "Healthy", "Degraded"], \
            "one HEALTH event per change, never one per poll"
    finally:
        await agent.stop()


async def _healthy_reason(cluster, reason: str):
    obj = await cluster.get(STACKS, "web")
    healthy = condition(obj, "Healthy")
    return obj if healthy and healthy["reason"] == reason else None


async def _more_checks(agent, at_least: float) -> bool:
    return agent.agent.metrics.health_checks_total._value.get() >= at_least


async def test_a_field_changed_by_another_manager_is_reported_as_drift_and_restored(operator_api, cluster, target, tmp_path,
                                                                                   db):
    target_server, view = target
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "apps"}}
    pak_file = await setup_loop(cluster, [namespace, configmap("settings", {"mode": "safe"})], tmp_path)
    agent = await start_agent(operator_api.url, pak_file, target_server, resync_interval=1.0)
    try:
        await wait_applied(cluster, "web")
        await view.client.request("PATCH", CONFIGMAPS.path("apps", "settings"), {"data": {"mode": "unsafe"}},
                                  "application/merge-patch+json", params={"fieldManager": "kubectl-edit"})

        async def drift_reported():
            rows = db.execute("SELECT message, details FROM agent_events WHERE event_type = 'DRIFT'").fetchall()
            return rows or None

        ((message, details),) = await eventually(drift_reported)
        (entry,) = details["drifted"]
        assert entry["object"] == "v1/ConfigMap apps/settings" and entry["fields"] == ["data.mode"]
        assert entry["managers"] == ["kubectl-edit"] and "kubectl-edit" in message

        async def restored():
            return (await view.configmaps())["settings"]["data"]["mode"] == "safe"

        await eventually(restored)
        assert agent.agent.metrics.drift_corrections_total.labels("ConfigMap")._value.get() == 1
        repairs = agent.agent.metrics.objects_applied_total._value.get()
        await eventually(lambda: _more_applied(agent, repairs + 2))  # later repairs find nothing to report
        assert len(db.execute("SELECT 1 FROM agent_events WHERE event_type = 'DRIFT'").fetchall()) == 1
    finally:
        await agent.stop()


async def _more_applied(agent, at_least: float) -> bool:
    return agent.agent.metrics.objects_applied_total._value.get() >= at_least
