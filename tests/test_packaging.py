"""Packaging: kustomize renders, workloads meet the restricted profile, chart and manifests agree, Dockerfile lints."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from stackyard import __version__
from stackyard.resources import CRDS

from .emulator import ROOT

BIN = Path(sys.executable).parent
KUBECTL = shutil.which("kubectl", path=str(BIN)) or shutil.which("kubectl")
CHART = ROOT / "charts" / "stackyard"
CLUSTER_RULES = [
    {"apiGroups": ["apiextensions.k8s.io"], "resources": ["customresourcedefinitions"], "verbs": ["list", "watch"]},
    {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["list"]},
]


def kustomize(path: Path) -> list[dict]:
    result = subprocess.run([KUBECTL, "kustomize", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def with_components(tmp_path: Path) -> list[dict]:
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": [os.path.relpath(ROOT / "manifests", overlay)],
        "components": [os.path.relpath(ROOT / "manifests/components/servicemonitor", overlay),
                       os.path.relpath(ROOT / "manifests/components/networkpolicy", overlay)],
    }))
    return kustomize(overlay)


def workloads(docs: list[dict]) -> list[dict]:
    return [d for d in docs if d["kind"] in ("Deployment", "StatefulSet", "DaemonSet")]


def test_manifests_render_a_complete_install(tmp_path):
    docs = kustomize(ROOT / "manifests")
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == sorted(["Namespace", "CustomResourceDefinition", "CustomResourceDefinition",
                            "CustomResourceDefinition", "ServiceAccount", "ClusterRole", "ClusterRoleBinding",
                            "Role", "RoleBinding",
                            "ConfigMap", "Deployment", "Service"])
    for doc in docs:
        if doc["kind"] not in ("Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"):
            assert doc["metadata"]["namespace"] == "stackyard-system", doc["metadata"]["name"]
    assert not any(d["kind"] == "Secret" for d in docs), "no generated secrets"
    rendered_twice = subprocess.run([KUBECTL, "kustomize", str(ROOT / "manifests")], capture_output=True, text=True)
    assert yaml.safe_dump_all(docs) == yaml.safe_dump_all(
        [d for d in yaml.safe_load_all(rendered_twice.stdout) if d]), "deterministic output"
    extra = {d["kind"] for d in with_components(tmp_path)} - set(kinds)
    assert extra == {"ServiceMonitor", "NetworkPolicy"}


@pytest.mark.parametrize("path", ["manifests", "manifests/agent"])
def test_every_workload_is_labelled_restricted_and_probed(path):
    docs = kustomize(ROOT / path)
    (deployment,) = workloads(docs)
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert labels["app.kubernetes.io/name"].startswith("stackyard")
    assert deployment["metadata"]["labels"]["app.kubernetes.io/part-of"] == "stackyard"
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert isinstance(pod["securityContext"]["runAsUser"], int) and pod["securityContext"]["runAsUser"] > 0
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    for container in pod["containers"]:
        security = container["securityContext"]
        assert security["allowPrivilegeEscalation"] is False
        assert security["readOnlyRootFilesystem"] is True
        assert security["capabilities"]["drop"] == ["ALL"]
        assert "livenessProbe" in container and "readinessProbe" in container, container["name"]
        assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
        assert not container.get("ports") or all(p["containerPort"] > 1024 for p in container["ports"])
    namespace = next(d for d in docs if d["kind"] == "Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_every_crd_and_monitoring_copy_is_generated_from_the_one_source(tmp_path):
    """crds/, manifests/crds/ and the chart's files/crds/ are written by `make generated` from stackyard.resources,
    the chart's and the components' alerts and dashboards from monitoring/; a hand edit, or a source change
    without `make generated`, fails here."""
    result = subprocess.run([sys.executable, "-m", "stackyard.resources.generate", "--check", str(ROOT)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"run `make generated`: {result.stdout}"
    shutil.copytree(ROOT / "monitoring", tmp_path / "monitoring")  # a tree with the sources and no copies
    stale = subprocess.run([sys.executable, "-m", "stackyard.resources.generate", "--check", str(tmp_path)],
                           capture_output=True, text=True, timeout=60)
    assert stale.returncode == 1
    assert "manifests/components/prometheusrule/prometheusrule.yaml" in stale.stdout
    assert "charts/stackyard/files/monitoring/dashboards/stackyard-fleet.json" in stale.stdout
    assert {p.name for p in (ROOT / "crds").glob("*.yaml")} == {f"{c['metadata']['name']}.yaml" for c in CRDS}


def test_values_schema_accepts_the_defaults_and_rejects_bad_values():
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    validator = jsonschema.Draft7Validator(schema)
    assert list(validator.iter_errors(values)) == []
    agent_values = {**values, "mode": "agent", "agent": {**values["agent"], "brokerUrl": "https://broker.example"}}
    assert list(validator.iter_errors(agent_values)) == []
    bad = [
        {**values, "mode": "sidecar"},
        {**values, "image": {**values["image"], "tag": 5}},
        {**values, "ports": {**values["ports"], "api": 70000}},
        {**values, "operator": {**values["operator"], "heartbeatInterval": "soon"}},
        {**values, "operator": {**values["operator"], "namespaces": ["Bad_NS"]}},
        {**values, "mode": "agent"},  # agent mode without a broker URL
        {**values, "surprise": True},
    ]
    for value in bad:
        assert list(validator.iter_errors(value)), value


def test_chart_and_manifests_agree_on_image_ports_and_rbac():
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    docs = kustomize(ROOT / "manifests")
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    images = {c["image"] for c in deployment["spec"]["template"]["spec"]["containers"]}
    assert images == {f"{values['image']['repository']}:{values['image']['tag']}"}
    assert values["image"]["tag"] == __version__
    ports = {p["name"]: p["containerPort"] for c in deployment["spec"]["template"]["spec"]["containers"]
             for p in c.get("ports", [])}
    assert ports == {"api": values["ports"]["api"], "metrics": values["ports"]["metrics"],
                     "health": values["ports"]["health"], "dbagent-metrics": values["ports"]["dbagentMetrics"]}
    role = next(d for d in docs if d["kind"] == "ClusterRole")
    assert yaml.safe_load((CHART / "files/operator-rules.yaml").read_text()) + CLUSTER_RULES == role["rules"]
    agent_role = next(d for d in kustomize(ROOT / "manifests/agent") if d["kind"] == "ClusterRole")
    assert yaml.safe_load((CHART / "files/agent-rules.yaml").read_text()) == agent_role["rules"]
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["appVersion"] == __version__
    crds_template = (CHART / "templates/crds.yaml").read_text()
    assert ".Values.crds.enabled" in crds_template and "helm.sh/resource-policy" in crds_template
    for template in (CHART / "templates").glob("*.yaml"):
        text = template.read_text()
        if "kind:" in text and "metadata:" in text:
            assert 'include "stackyard.labels"' in text, template.name


def test_dockerfile_passes_hadolint_and_follows_the_rules():
    hadolint = shutil.which("hadolint", path=str(BIN)) or shutil.which("hadolint")
    result = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    text = (ROOT / "Dockerfile").read_text()
    assert len(re.findall(r"^FROM ", text, re.M)) >= 2, "multi-stage"
    assert re.search(r"^FROM python:3\.\d+-slim", text, re.M)
    user = re.search(r"^USER (\d+)(?::\d+)?$", text, re.M)
    assert user and int(user.group(1)) > 0, "numeric non-root USER"
    assert re.search(r'^ENTRYPOINT \["stackyard"\]$', text, re.M), "exec-form entrypoint"
    assert f"stackyard=={__version__}" in text
