"""Per-cluster customization (README, "Per-cluster customization"): one Stack, each agent its own rendering.

The management and target clusters are kmock emulators (no Kubernetes runs here); PostgreSQL, the operator,
the agent API and the agents are real.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import aiohttp
import yaml

from .kubectl import ApiResource
from .loop_harness import start_agent, target_cluster, write_pak
from .operator_harness import AGENT_TARGETS, AGENTS, STACKS, condition, eventually

DEPLOYMENTS = ApiResource("apps/v1", "Deployment", "deployments", True)
PROMPT = 5.0  # a relabel reaches the agent through NOTIFY and its long-poll, not a resync


def deployment(replicas: int = 1) -> dict:
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "apps"},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}},
                     "template": {"metadata": {"labels": {"app": "web"}},
                                  "spec": {"containers": [{"name": "web", "image": "nginx:1.27"}]}}}}


def settings_map() -> dict:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings", "namespace": "apps"},
            "data": {"cluster": "unset", "mode": "standard"}}


OVERLAYS = [
    {"agentSelector": {"matchLabels": {"region": "us"}},
     "patches": [{"target": {"kind": "Deployment", "name": "web"}, "patch": {"spec": {"replicas": 3}}}]},
    {"agentSelector": {},
     "patches": [{"target": {"apiVersion": "v1", "kind": "ConfigMap", "name": "settings"},
                  "patch": {"data": {"cluster": "{{cluster.name}}", "region": "{{agent.labels.region}}",
                                     "template": "{{{{ .Values.kept }}", "mode": None}}}]},
]


async def state_of(api_url: str, token: str) -> dict:
    """The agent's one Stack in its target state, through the real agent API."""
    async with aiohttp.ClientSession() as http, http.get(
            f"{api_url}/api/v1/agents/self/target-state", headers={"Authorization": f"Bearer {token}"}) as response:
        assert response.status == 200
        return (await response.json())["stacks"][0]


def objects(stack: dict) -> dict[str, dict]:
    return {doc["kind"]: doc for doc in yaml.safe_load_all(stack["deploymentObject"]["yaml"]) if doc}


def entry(stack: dict, agent: str) -> dict:
    return next(e for e in stack["status"]["agents"] if e["agentName"] == agent)


async def test_each_agent_receives_and_applies_its_own_rendering(operator, operator_api, cluster, tmp_path: Path):
    for name, region in (("edge-eu", "eu"), ("edge-us", "us")):
        await cluster.create(AGENTS, {"metadata": {"name": name, "labels": {"region": region}},
                                      "spec": {"clusterName": f"{region}-1"}})
    await cluster.create(STACKS, {"metadata": {"name": "web"}, "spec": {
        "resources": [deployment(), settings_map()], "overlays": OVERLAYS}})
    await cluster.create(AGENT_TARGETS, {"metadata": {"name": "web-all"}, "spec": {
        "stackRef": {"name": "web"}, "agentSelector": {"matchExpressions": [{"key": "region", "operator": "Exists"}]}}})
    ready = await cluster.wait_condition(STACKS, "web", "Ready", "True")
    await cluster.wait_targeted("web", 2)  # Ready: the version is stored; bound to both agents: this
    base = ready["status"]["deploymentObject"]
    tokens = {name: await write_pak(cluster, name, tmp_path / name) for name in ("edge-eu", "edge-us")}

    # each target state holds exactly that agent's rendering, with a checksum of what it holds
    eu, us = await state_of(operator_api.url, tokens["edge-eu"]), await state_of(operator_api.url, tokens["edge-us"])
    assert objects(us)["Deployment"]["spec"]["replicas"] == 3 and objects(eu)["Deployment"]["spec"]["replicas"] == 1
    assert objects(us)["ConfigMap"]["data"] == {"cluster": "us-1", "region": "us", "template": "{{ .Values.kept }}"}
    assert objects(eu)["ConfigMap"]["data"] == {"cluster": "eu-1", "region": "eu", "template": "{{ .Values.kept }}"}
    assert "overlays" not in eu["deploymentObject"]["yaml"] and "agentSelector" not in us["deploymentObject"]["yaml"]
    checksums = {eu["deploymentObject"]["checksum"], us["deploymentObject"]["checksum"], base["checksum"]}
    assert len(checksums) == 3, "each rendering has its own checksum"
    assert eu["deploymentObject"]["id"] == us["deploymentObject"]["id"] == base["id"], "one version"

    # both agents apply their own rendering; the Stack says which overlays applied to whom
    async with contextlib.AsyncExitStack() as stack:
        targets = {}
        for name in ("edge-eu", "edge-us"):
            server, view = await stack.enter_async_context(target_cluster())
            targets[name] = view
            agent = await start_agent(operator_api.url, tmp_path / name, server)
            stack.push_async_callback(agent.stop)

        async def replicas(name: str) -> int | None:
            found = await targets[name].client.get_or_none(DEPLOYMENTS.path("apps", "web"))
            return found["spec"]["replicas"] if found else None

        async def applied_as(expected: dict[str, int]) -> dict | None:
            got = {name: await replicas(name) for name in expected}
            obj = await cluster.get(STACKS, "web")
            states = {e["agentName"]: e["state"] for e in obj["status"].get("agents", [])}
            return obj if got == expected and set(states.values()) == {"Applied"} and len(states) == 2 else None

        applied = await eventually(lambda: applied_as({"edge-eu": 1, "edge-us": 3}))
        assert entry(applied, "edge-us")["overlays"] == [0, 1] and entry(applied, "edge-eu")["overlays"] == [1]
        assert entry(applied, "edge-us")["checksum"] == us["deploymentObject"]["checksum"]
        settings = await targets["edge-eu"].configmaps()
        assert settings["settings"]["data"]["cluster"] == "eu-1" and "mode" not in settings["settings"]["data"]

        # relabelled, the eu agent gets the us rendering: no new version, within seconds
        await cluster.patch(AGENTS, "edge-eu", {"metadata": {"labels": {"region": "us"}}})
        moved = await eventually(lambda: applied_as({"edge-eu": 3, "edge-us": 3}), timeout=PROMPT)
        assert moved["status"]["deploymentObject"]["sequenceId"] == base["sequenceId"]

        async def overlays_follow():
            return entry(await cluster.get(STACKS, "web"), "edge-eu").get("overlays") == [0, 1]

        await eventually(overlays_follow, timeout=PROMPT)
        assert (await targets["edge-eu"].configmaps())["settings"]["data"]["region"] == "us"

        # a variable only one agent has a value for fails the other agent only; it keeps what it applied
        await cluster.patch(AGENTS, "edge-us", {"metadata": {"labels": {"tier": "canary"}}})
        tiered = OVERLAYS + [{"agentSelector": {}, "patches": [{"target": {"kind": "ConfigMap", "name": "settings"},
                                                                 "patch": {"data": {"tier": "{{agent.labels.tier}}"}}}]}]
        await cluster.patch(STACKS, "web", {"spec": {"overlays": tiered}})

        async def split():
            obj = await cluster.get(STACKS, "web")
            states = {e["agentName"]: (e["state"], e.get("message", "")) for e in obj["status"].get("agents", [])}
            us_data = (await targets["edge-us"].configmaps())["settings"]["data"]
            return obj if (states.get("edge-eu", ("",))[0] == "Failed" and states["edge-us"][0] == "Applied"
                           and us_data.get("tier") == "canary") else None

        failed = await eventually(split)
        message = entry(failed, "edge-eu")["message"]
        assert message.startswith("OverlayFailed") and "{{agent.labels.tier}}" in message and "'tier'" in message
        assert failed["status"]["targets"]["failed"] == 1 and failed["status"]["targets"]["applied"] == 1
        assert await replicas("edge-eu") == 3, "the failed agent keeps what it applied"
        assert "tier" not in (await targets["edge-eu"].configmaps())["settings"]["data"]
        eu_state = await state_of(operator_api.url, tokens["edge-eu"])
        assert eu_state["renderError"].startswith("OverlayFailed") and eu_state["deploymentObject"]["yaml"] == ""


async def test_an_overlay_that_names_nothing_or_renames_stalls_the_stack(operator, cluster):
    bad = [
        ({"target": {"kind": "Deployment", "name": "api"}, "patch": {"spec": {"replicas": 2}}}, "names no resource"),
        ({"target": {"kind": "Deployment", "name": "web"}, "patch": {"metadata": {"name": "other"}}},
         "changes metadata.name"),
        ({"target": {"kind": "Deployment", "name": "web"}, "patch": {"spec": {"x": "{{cluster.nam}}"}}},
         "{{cluster.nam}} is not a variable"),
    ]
    for number, (patch, problem) in enumerate(bad):
        name = f"web-{number}"
        await cluster.create(STACKS, {"metadata": {"name": name}, "spec": {
            "resources": [deployment()], "overlays": [{"agentSelector": {}, "patches": [patch]}]}})
        stalled = await cluster.wait_condition(STACKS, name, "Stalled", "True", reason="InvalidOverlay")
        message = condition(stalled, "Stalled")["message"]
        assert "spec.overlays[0].patches[0]" in message and problem in message, message
        assert "deploymentObject" not in stalled["status"]
