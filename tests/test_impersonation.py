"""Least privilege in target clusters (README, "Multi-tenancy"): each namespace's Stacks applied as the service
account the Agent maps it to.

The target cluster is the kmock emulator with RBAC and impersonation enforced as the API server does them
(tests/rbac.py): no Kubernetes runs here. PostgreSQL, the operator, the agent API and the agent are real.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import aiohttp
import yaml

from .emulator import ROOT, rules_of
from .kubectl import ApiResource
from .loop_harness import agent_entry, start_agent, write_pak
from .operator_harness import AGENT_TARGETS, AGENTS, STACKS, eventually

ROLES = ApiResource("rbac.authorization.k8s.io/v1", "Role", "roles", True)
ROLE_BINDINGS = ApiResource("rbac.authorization.k8s.io/v1", "RoleBinding", "rolebindings", True)
SERVICE_ACCOUNTS = ApiResource("v1", "ServiceAccount", "serviceaccounts", True)
DEPLOYER = "system:serviceaccount:team-a:team-a-deployer"
AGENT = "system:serviceaccount:stackyard-system:stackyard-agent"


def configmap(name: str, namespace: str) -> dict:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": namespace},
            "data": {"k": "v"}}


ADMIN_BINDING = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                 "metadata": {"name": "team-a-admin"},
                 "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
                 "subjects": [{"kind": "ServiceAccount", "name": "team-a-deployer", "namespace": "team-a"}]}


async def seed_target(client) -> None:
    """What the cluster owner set up: team-a's deployer may manage ConfigMaps in team-a, nothing else; the agent
    may impersonate it (manifests/agent/components/impersonation)."""
    await client.request("POST", SERVICE_ACCOUNTS.path("team-a"), {
        "apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "team-a-deployer", "namespace": "team-a"}})
    await client.request("POST", ROLES.path("team-a"), {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": {"name": "deployer", "namespace": "team-a"},
        "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "create", "patch", "delete"]}]})
    await client.request("POST", ROLE_BINDINGS.path("team-a"), {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": "deployer", "namespace": "team-a"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "deployer"},
        "subjects": [{"kind": "ServiceAccount", "name": "team-a-deployer", "namespace": "team-a"}]})
    for doc in yaml.safe_load_all(
            (ROOT / "manifests/agent/components/impersonation/impersonate.yaml").read_text()):
        resource = ROLES if doc["kind"] == "Role" else ROLE_BINDINGS
        await client.request("POST", resource.path(doc["metadata"]["namespace"]), doc)


async def test_each_namespace_applies_as_the_account_it_is_mapped_to(operator, operator_api, cluster, target,
                                                                     tmp_path: Path):
    target_server, target_view = target
    await seed_target(target_view.client)
    authorizer = target_server.emulator.enforce_rbac(rules_of(ROOT / "manifests/agent/rbac.yaml"))
    await cluster.create(AGENTS, {"metadata": {"name": "edge"}, "spec": {
        "clusterName": "eu-1", "allowedNamespaces": ["team-a", "team-b"],
        "impersonate": [{"namespaces": ["team-a"],
                         "serviceAccount": {"namespace": "team-a", "name": "team-a-deployer"}}]}})
    for namespace, name, resources in (("team-a", "web", [configmap("a", "team-a"), ADMIN_BINDING]),
                                       ("team-b", "ops", [configmap("b", "team-b")])):
        await cluster.create(STACKS, {"metadata": {"name": name, "namespace": namespace},
                                      "spec": {"resources": resources}})
        await cluster.create(AGENT_TARGETS, {"metadata": {"name": name, "namespace": namespace}, "spec": {
            "stackRef": {"name": name}, "agentName": "edge", "clusterName": "eu-1"}})
    await write_pak(cluster, "edge", tmp_path / "pak")
    agent = await start_agent(operator_api.url, tmp_path / "pak", target_server)

    async def entry_of(stack: str, namespace: str, state: str, containing: str = "") -> dict | None:
        found = agent_entry(await cluster.get(STACKS, stack, namespace), "edge", "eu-1")
        return found if found and found["state"] == state and containing in found.get("message", "") else None

    try:
        # team-a's Stack: its ConfigMap applied as the deployer; its ClusterRoleBinding refused with the API
        # server's reason naming the account, the rest applied
        failed = await eventually(lambda: entry_of("web", "team-a", "Failed", "forbidden"))
        assert f'clusterrolebindings "team-a-admin" is forbidden: User "{DEPLOYER}" cannot' in failed["message"]
        assert "1/2 objects applied" in failed["message"]
        assert (await target_view.configmaps("team-a"))["a"]["data"] == {"k": "v"}
        assert (DEPLOYER, "patch", "configmaps", "a") in authorizer.allowed
        assert not any(user == AGENT and resource == "configmaps" and name == "a"
                       for user, _verb, resource, name in authorizer.allowed), "never as the agent itself"
        assert not any(name == "team-a-admin" for _u, _v, _r, name in authorizer.allowed)

        # team-b is mapped to nothing: applied as the agent itself
        await eventually(lambda: entry_of("ops", "team-b", "Applied"))
        assert (AGENT, "patch", "configmaps", "b") in authorizer.allowed

        # the deployer's next version drops "a": pruned as the deployer; health is read as the deployer too
        await cluster.patch(STACKS, "web", {"spec": {"resources": [configmap("a2", "team-a")]}}, namespace="team-a")

        async def healthy():
            found = await entry_of("web", "team-a", "Applied")
            return found if found and found["health"] == "Healthy" else None

        await eventually(healthy)
        assert set(await target_view.configmaps("team-a")) == {"a2"}
        assert (DEPLOYER, "delete", "configmaps", "a") in authorizer.allowed
        assert (DEPLOYER, "get", "configmaps", "a2") in authorizer.allowed, "health read as the deployer"
        assert not any(user == AGENT and verb == "delete" and name == "a" for user, verb, _r, name in authorizer.allowed)

        # impersonation required: team-b's Stack is applied by nobody, and its entry says why
        await cluster.patch(AGENTS, "edge", {"spec": {"impersonationRequired": True}})
        await cluster.patch(STACKS, "ops", {"spec": {"resources": [configmap("b", "team-b"), configmap("c", "team-b")]}},
                            namespace="team-b")
        refused = await eventually(lambda: entry_of("ops", "team-b", "Failed", "ImpersonationRequired"))
        assert "maps no service account" in refused["message"]
        assert set(await target_view.configmaps("team-b")) == {"b"}, "nothing new applied, nothing removed"

        # the agent loses its impersonate right: a clear error, nothing applied as anyone else
        await target_view.client.delete(ROLE_BINDINGS.path("team-a", "stackyard-agent-impersonate-team-a-deployer"))
        await cluster.patch(STACKS, "web", {"spec": {"resources": [configmap("a2", "team-a"), configmap("a3", "team-a")]}},
                            namespace="team-a")
        denied = await eventually(lambda: entry_of("web", "team-a", "Failed", "cannot impersonate"))
        assert (f'serviceaccounts "team-a-deployer" is forbidden: User "{AGENT}" cannot impersonate resource'
                f' "serviceaccounts"') in denied["message"]
        assert "agent.impersonation.serviceAccounts" in denied["message"]
        assert "a3" not in await target_view.configmaps("team-a")
    finally:
        await agent.stop()


async def test_the_first_entry_naming_the_namespace_decides_and_required_refuses_the_rest(store):
    rules = [{"namespaces": ["team-a"], "serviceAccount": {"namespace": "a", "name": "first"}},
             {"namespaces": ["team-a", "team-b"], "serviceAccount": {"namespace": "b", "name": "second"}}]
    agent = await store.register_agent(uuid.uuid4(), "edge", "eu-1", namespace="platform",
                                       allowed_namespaces=["team-a", "team-b", "team-c"], impersonate=rules)
    for namespace in ("team-a", "team-b", "team-c"):
        stack_id = uuid.uuid4()
        await store.upsert_stack(stack_id, f"{namespace}/web", None)
        await store.emit_deployment_object(stack_id, "kind: ConfigMap\n")
        await store.set_agent_targets(uuid.uuid4(), stack_id, [("edge", "eu-1")], namespace=namespace)

    async def decisions() -> dict[str, object]:
        return {s.stack_name.split("/")[0]: s.apply_as for s in await store.desired_state("edge", "eu-1")}

    assert await decisions() == {"team-a": {"serviceAccount": {"namespace": "a", "name": "first"}},
                                 "team-b": {"serviceAccount": {"namespace": "b", "name": "second"}},
                                 "team-c": None}
    etag_before = await store.desired_versions("edge", "eu-1")
    await store.register_agent(agent.id, "edge", "eu-1", namespace="platform",
                               allowed_namespaces=["team-a", "team-b", "team-c"], impersonate=rules,
                               impersonation_required=True)
    assert (await decisions())["team-c"] == {"refused": True}
    assert await store.desired_versions("edge", "eu-1") != etag_before, "what the ETag is made of changed"


async def test_the_emulator_impersonates_as_the_api_server_does(target):
    """tests/rbac.py: impersonating needs `impersonate` on the account; the account gets its fixed groups; an
    apply that creates needs `create` besides `patch`."""
    server, view = target
    await view.client.request("POST", ROLES.path("team-a"), {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "patcher", "namespace": "team-a"},
        "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "patch"]}]})
    await view.client.request("POST", ROLE_BINDINGS.path("team-a"), {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "all-accounts",
                                                                                          "namespace": "team-a"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "patcher"},
        "subjects": [{"kind": "Group", "name": "system:serviceaccounts:team-a"}]})
    await view.client.request("POST", "/api/v1/namespaces/team-a/configmaps", configmap("existing", "team-a"))
    caller_rules = [{"apiGroups": [""], "resources": ["serviceaccounts"], "verbs": ["impersonate"],
                     "resourceNames": ["deployer"]}]
    authorizer = server.emulator.enforce_rbac(caller_rules)
    as_deployer = {"Impersonate-User": "system:serviceaccount:team-a:deployer"}
    apply = {"Content-Type": "application/apply-patch+yaml"}

    async def call(method: str, path: str, headers: dict, body: dict | None = None) -> int:
        async with aiohttp.ClientSession() as http, http.request(
                method, f"{server.url}{path}?fieldManager=t", headers=headers,
                data=None if body is None else json.dumps(body)) as response:
            return response.status

    cm = "/api/v1/namespaces/team-a/configmaps"
    assert await call("PATCH", f"{cm}/existing", {**as_deployer, **apply}, configmap("existing", "team-a")) == 200
    assert await call("PATCH", f"{cm}/new", {**as_deployer, **apply}, configmap("new", "team-a")) == 403
    assert "cannot create resource \"configmaps\"" in authorizer.denials[-1]
    assert await call("GET", f"{cm}/existing", {"Impersonate-User": "system:serviceaccount:team-a:other"}) == 403
    assert 'User "system:serviceaccount:stackyard-system:stackyard-agent" cannot impersonate' in authorizer.denials[-1]
    assert await call("GET", f"{cm}/existing", {**as_deployer, "Impersonate-Group": "system:masters"}) == 403
    assert 'cannot impersonate resource "groups"' in authorizer.denials[-1]
    assert await call("DELETE", f"{cm}/existing", as_deployer) == 403
