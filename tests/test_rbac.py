"""RBAC grants exactly the Kubernetes calls stackyard makes, checked both ways, and against real calls."""

from __future__ import annotations

import re

import yaml

from stackyard.kube import KUBE_CALLS

from .builders import configmap
from .emulator import ROOT
from .operator_harness import AGENT_TARGETS, AGENTS, STACKS
from .test_packaging import kustomize


def granted(path) -> set[tuple[str, str, str]]:
    result = set()
    for doc in yaml.safe_load_all(path.read_text()):
        if doc and doc["kind"] in ("ClusterRole", "Role"):
            for rule in doc["rules"]:
                for group in rule["apiGroups"]:
                    for resource in rule["resources"]:
                        for verb in rule["verbs"]:
                            result.add((verb, group, resource))
    return result


def listed(component: str) -> set[tuple[str, str, str]]:
    return {(verb, group, resource) for who, verb, group, resource in KUBE_CALLS if who == component}


def test_operator_rbac_is_exactly_the_listed_calls():
    assert granted(ROOT / "manifests/rbac.yaml") == listed("operator")


def test_agent_rbac_is_exactly_the_listed_calls():
    assert granted(ROOT / "manifests/agent/rbac.yaml") == listed("agent")


def test_an_impersonating_agent_holds_no_right_to_apply_of_its_own(tmp_path):
    rendered = tmp_path / "agent.yaml"
    rendered.write_text(yaml.safe_dump_all(kustomize(ROOT / "examples/agent-impersonation")))
    assert granted(rendered) == listed("agent-least-privilege")
    assert not any(verb in ("escalate", "bind") or resource == "*" for verb, _group, resource in granted(rendered))


def test_secrets_are_read_for_stacks_and_never_deleted_and_the_readme_says_why():
    verbs = {verb for verb, group, resource in granted(ROOT / "manifests/rbac.yaml") if resource == "secrets"}
    assert verbs == {"create", "patch", "get", "list", "watch"}, "read for spec.secretRefs, written for agent keys"
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert "grant `get`, `list` and `watch` on Secrets: `get` reads a referenced Secret" in readme


PATH = re.compile(r"^/apis?/(?:(?P<group>[^/]+)/)?(?P<version>v[^/]+)(?:/namespaces/[^/]+)?/(?P<resource>[^/?]+)"
                  r"(?:/(?P<name>[^/?]+))?(?:/(?P<sub>[^/?]+))?")


def verb_of(method: str, has_name: bool, watch: bool) -> str:
    if method == "GET":
        return "get" if has_name else ("watch" if watch else "list")
    return {"POST": "create", "PATCH": "patch", "PUT": "update", "DELETE": "delete"}[method]


async def test_the_operators_real_calls_stay_within_the_list(operator, cluster, kube_server):
    """Drive every handler once, then map every request the emulator saw to (verb, group, resource)."""
    await cluster.create(AGENTS, {"metadata": {"name": "edge"}, "spec": {"clusterName": "eu-1"}})
    await cluster.create(STACKS, {"metadata": {"name": "web"}, "spec": {"resources": [configmap("a")]}})
    await cluster.create(AGENT_TARGETS, {"metadata": {"name": "t"},
                                         "spec": {"stackRef": {"name": "web"}, "agentName": "edge", "clusterName": "eu-1"}})
    await cluster.create(STACKS, {"metadata": {"name": "bad"}, "spec": {"resources": [configmap("a"), configmap("a")]}})
    await cluster.wait_condition(AGENT_TARGETS, "t", "Ready", "True")
    await cluster.wait_condition(STACKS, "bad", "Stalled", "True")
    await cluster.wait_condition(AGENTS, "edge", "Ready", "True")
    for resource, name in ((AGENT_TARGETS, "t"), (STACKS, "web"), (AGENTS, "edge")):
        await cluster.delete(resource, name)
        await cluster.wait_gone(resource, name)

    seen = set()
    for request in kube_server.call(lambda: list(kube_server.emulator._requests)):
        agent = request.headers.get("User-Agent", "")
        if not agent.startswith("kopf") and agent != "stackyard-operator":
            continue  # the test's own kubectl-like client
        match = PATH.match(request.url.path)
        if match is None:
            continue  # discovery (/api, /apis, /apis/group/version) needs no RBAC rule
        resource = match["resource"] + (f"/{match['sub']}" if match["sub"] else "")
        watch = request.url.query.get("watch") in ("true", "1")
        seen.add((verb_of(request.method.value if hasattr(request.method, "value") else str(request.method),
                          bool(match["name"]), watch), match["group"] or "", resource))
    assert ("patch", "", "secrets") in seen and ("watch", "stackyard.dev", "stacks") in seen, seen
    assert seen <= listed("operator"), seen - listed("operator")
