"""The CRDs themselves: shape, printer columns, and validation of examples and bad objects."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from .crd_schema import validate
from .emulator import ROOT, load_crds


def examples() -> list[tuple[str, dict]]:
    found = []
    for path in sorted((ROOT / "examples").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc["apiVersion"].startswith("stackyard.dev/"):
                found.append((f"{path.name}:{doc['kind']}/{doc['metadata']['name']}", doc))
    return found


def test_every_crd_is_complete():
    crds = {c["spec"]["names"]["kind"]: c for c in load_crds()}
    assert set(crds) == {"Stack", "AgentTarget", "Agent"}
    short = {"Stack": "stk", "AgentTarget": "at", "Agent": "sya"}
    for kind, crd in crds.items():
        spec = crd["spec"]
        assert spec["group"] == "stackyard.dev" and spec["scope"] == "Namespaced"
        assert "stackyard" in spec["names"]["categories"]
        assert spec["names"]["shortNames"] == [short[kind]]
        (version,) = spec["versions"]
        assert version["name"] == "v1alpha1" and version["storage"] and version["served"]
        assert version["subresources"] == {"status": {}}
        columns = {c["name"] for c in version["additionalPrinterColumns"]}
        assert "Age" in columns
        status = version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
        assert {"observedGeneration", "conditions"} <= set(status)
    stack_columns = {c["name"] for c in crds["Stack"]["spec"]["versions"][0]["additionalPrinterColumns"]}
    assert {"Ready", "Sequence", "Applied", "Targets"} <= stack_columns
    target_columns = {c["name"] for c in crds["AgentTarget"]["spec"]["versions"][0]["additionalPrinterColumns"]}
    assert {"Stack", "Agent", "Cluster", "State"} <= target_columns
    agent_columns = {c["name"] for c in crds["Agent"]["spec"]["versions"][0]["additionalPrinterColumns"]}
    assert {"Cluster", "Phase", "Last Heartbeat"} <= agent_columns


def test_crd_files_are_named_after_their_crd():
    for path in Path(ROOT / "crds").glob("*.yaml"):
        assert yaml.safe_load(path.read_text())["metadata"]["name"] + ".yaml" == path.name


@pytest.mark.parametrize("name,obj", examples(), ids=[name for name, _ in examples()])
def test_examples_are_valid(name, obj):
    assert validate(obj) == []


def test_examples_cover_every_kind():
    assert {obj["kind"] for _, obj in examples()} == {"Stack", "AgentTarget", "Agent"}


def _undescribed(schema: dict, path: str) -> list[str]:
    missing = []
    for name, sub in (schema.get("properties") or {}).items():
        if name in ("apiVersion", "kind", "metadata"):
            continue
        if not sub.get("description"):
            missing.append(f"{path}.{name}")
        missing += _undescribed(sub, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        missing += _undescribed(schema["items"], f"{path}[]")
    return missing


@pytest.mark.parametrize("crd", load_crds(), ids=lambda c: c["spec"]["names"]["kind"])
def test_kubectl_explain_has_a_description_for_every_field(crd):
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    assert schema.get("description")
    assert _undescribed(schema, crd["spec"]["names"]["kind"]) == []


def test_default_printer_columns_show_failures_and_readiness():
    def default_columns(kind: str) -> list[str]:
        crd = next(c for c in load_crds() if c["spec"]["names"]["kind"] == kind)
        return [c["name"] for c in crd["spec"]["versions"][0]["additionalPrinterColumns"] if not c.get("priority")]

    assert {"Ready", "Applied", "Failed", "Targets"} <= set(default_columns("Stack"))
    assert "Ready" in default_columns("AgentTarget"), "shown without -o wide"


def test_the_effective_agent_name_cannot_change():
    created = {"apiVersion": "stackyard.dev/v1alpha1", "kind": "Agent", "metadata": {"name": "edge", "namespace": "a"},
               "spec": {"clusterName": "eu-1"}}
    renamed = {**created, "spec": {"clusterName": "eu-1", "agentName": "other"}}
    spelled_out = {**created, "spec": {"clusterName": "eu-1", "agentName": "edge"}}
    assert validate(renamed) == [] and validate(spelled_out) == []
    assert any("immutable" in e for e in validate(renamed, created)), "setting agentName later renames the agent"
    assert validate(spelled_out, created) == [], "writing the default out is no change"
    assert any("immutable" in e for e in validate(created, renamed)), "dropping agentName falls back to the name"
