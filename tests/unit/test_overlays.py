"""Overlays as units: RFC 7386 merge patches, the variable rules, per-agent rendering and the spec's checks."""

from __future__ import annotations

import pytest
import yaml

from stackyard.controller.overlays import agent_overlays, validate_overlays
from stackyard.controller.render import InvalidSpec, canonical_yaml
from stackyard.overlays import Agent, BadTemplate, UndefinedVariable, merge_patch, render, substitute, variables_in

US = Agent("edge-1", "us-1", {"region": "us", "replicas": "3"})


@pytest.mark.parametrize("target,patch,merged", [
    ({"a": 1, "b": 2}, {"b": None}, {"a": 1}),  # null deletes
    ({"a": 1}, {"b": None}, {"a": 1}),  # deleting what is absent is no error
    ({"l": [1, 2, 3]}, {"l": [4]}, {"l": [4]}),  # lists replace, never merge
    ({"a": {"x": 1, "y": 2}}, {"a": {"y": 3, "z": {"q": None}}}, {"a": {"x": 1, "y": 3, "z": {}}}),  # recursive
    ({"a": 1}, {"a": {"b": 2}}, {"a": {"b": 2}}),  # a scalar becomes an object
    ({"a": {"b": 2}}, {"a": "s"}, {"a": "s"}),  # an object becomes a scalar
    ({"a": 1}, ["x"], ["x"]),  # a patch that is not an object replaces the whole target
    ({"a": 1}, {}, {"a": 1}),
])
def test_merge_patch_follows_rfc_7386(target, patch, merged):
    original = repr(target)
    assert merge_patch(target, patch) == merged
    assert repr(target) == original, "the target is not modified in place"


def test_variables_keep_the_string_type_and_have_an_escape():
    assert substitute("{{agent.labels.replicas}}", US, 0) == "3"
    assert substitute("{{ cluster.name }}-{{agent.name}}", US, 0) == "us-1-edge-1"
    assert substitute("{{{{ .Values.x }}", US, 0) == "{{ .Values.x }}"
    assert substitute("{{{{cluster.name}}", US, 0) == "{{cluster.name}}", "escaped: not a variable"
    assert substitute("${HOME} {single} }}", US, 0) == "${HOME} {single} }}", "only {{ is special"
    assert variables_in("a {{cluster.name}} b {{agent.labels.example.com/team}}") == [
        "cluster.name", "agent.labels.example.com/team"]


@pytest.mark.parametrize("text,problem", [
    ("{{cluster}}", "not a variable"),
    ("{{agent.labels.}}", "not a variable"),
    ("{{env.HOME}}", "not a variable"),
    ("{{cluster.name", "unclosed"),
    ("{{{cluster.name}}", "unclosed"),
])
def test_a_bad_template_is_named(text, problem):
    with pytest.raises(BadTemplate, match=problem):
        variables_in(text)


def test_an_undefined_label_names_the_variable_and_the_overlay():
    with pytest.raises(UndefinedVariable) as undefined:
        substitute("{{agent.labels.tier}}", US, 2)
    assert undefined.value.variable == "agent.labels.tier"
    assert str(undefined.value).startswith("overlay 2: {{agent.labels.tier}} is undefined") and "'tier'" in str(
        undefined.value)


CONTENT = canonical_yaml([
    {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": "apps"}, "data": {"k": "v"}},
    {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "apps"},
     "spec": {"replicas": 1}},
])


def test_rendering_applies_matching_overlays_in_order_and_only_to_their_target():
    overlays = [
        {"agentSelector": {"matchExpressions": [{"key": "region", "operator": "In", "values": ["us", "ca"]}]},
         "patches": [{"target": {"kind": "Deployment", "name": "web"}, "patch": {"spec": {"replicas": 2}}}]},
        {"agentSelector": {"matchLabels": {"region": "eu"}},
         "patches": [{"target": {"kind": "Deployment", "name": "web"}, "patch": {"spec": {"replicas": 9}}}]},
        {"agentSelector": {},
         "patches": [{"target": {"kind": "Deployment", "name": "web"},
                      "patch": {"spec": {"replicas": 5, "paused": "{{agent.labels.replicas}}"}}}]},
    ]
    rendered = render(CONTENT, "base", overlays, US)
    documents = {d["kind"]: d for d in yaml.safe_load_all(rendered.content)}
    assert rendered.overlays == [0, 2]
    assert documents["Deployment"]["spec"] == {"replicas": 5, "paused": "3"}, "later overlays win; a string stays one"
    assert documents["ConfigMap"]["data"] == {"k": "v"}
    assert rendered.checksum != "base" and render(CONTENT, "base", overlays, US).checksum == rendered.checksum
    other = render(CONTENT, "base", overlays, Agent("edge-2", "us-2", {"region": "us", "replicas": "3"}))
    assert other.content == rendered.content and other.checksum == rendered.checksum, "same patches, same checksum"
    nothing = render(CONTENT, "base", overlays[:2], Agent("x", "y", {}))
    assert (nothing.content, nothing.checksum, nothing.overlays) == (CONTENT, "base", [])


RESOURCES = [
    {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "apps"}},
    {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "web", "namespace": "apps"}},
    {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "web", "namespace": "ops"}},
    {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "creds", "namespace": "apps"}},
]


def overlay(target: dict, patch: dict, selector: dict | None = None) -> dict:
    return {"spec": {"overlays": [{"agentSelector": selector or {}, "patches": [{"target": target, "patch": patch}]}]}}


@pytest.mark.parametrize("spec,problem", [
    (overlay({"kind": "Deployment", "name": "api"}, {}), "names no resource"),
    (overlay({"kind": "ConfigMap", "name": "web"}, {}), "names 2 resources"),
    (overlay({"kind": "Secret", "name": "creds"}, {"data": {}}), "patches a Secret"),
    (overlay({"kind": "Deployment", "name": "web"}, {"kind": "StatefulSet"}), "changes kind"),
    (overlay({"kind": "Deployment", "name": "web"}, {"apiVersion": "apps/v2"}), "changes apiVersion"),
    (overlay({"kind": "Deployment", "name": "web"}, {"metadata": {"namespace": "x"}}), "changes metadata.namespace"),
    (overlay({"kind": "Deployment", "name": "web"}, {"metadata": None}), "replaces metadata"),
    (overlay({"kind": "Deployment", "name": "web"}, {"metadata": {"name": None}}), "changes metadata.name"),
    (overlay({"kind": "Deployment", "name": "web"}, {"spec": ["{{agent.labels}}"]}), "not a variable"),
    (overlay({"kind": "Deployment", "name": "web"}, {}, {"matchLabels": {"bad key!": "x"}}), "not a label key"),
    ({"spec": {"overlays": [{"agentSelector": {}, "patches": []}]}}, "must list 1 to"),
])
def test_a_malformed_overlay_stalls_naming_it(spec, problem):
    with pytest.raises(InvalidSpec) as refused:
        validate_overlays(spec["spec"], RESOURCES)
    assert refused.value.reason == "InvalidOverlay" and problem in refused.value.message
    assert "spec.overlays[0]" in refused.value.message


def test_valid_overlays_are_stored_with_what_they_need_and_an_unchanged_identity_passes():
    spec = overlay({"kind": "ConfigMap", "name": "web", "namespace": "ops", "apiVersion": None},
                   {"metadata": {"name": "web", "labels": {"x": "y"}}, "kind": "ConfigMap"})["spec"]
    stored = validate_overlays(spec, RESOURCES)
    assert stored == [{"agentSelector": {}, "patches": [{
        "target": {"kind": "ConfigMap", "name": "web", "namespace": "ops"},
        "patch": {"metadata": {"name": "web", "labels": {"x": "y"}}, "kind": "ConfigMap"}}]}]
    assert validate_overlays({}, RESOURCES) is None
    assert agent_overlays(stored, US) == ([0], None)
    undefined = [{"agentSelector": {}, "patches": [{"target": {"kind": "Deployment", "name": "web"},
                                                     "patch": {"x": "{{agent.labels.tier}}"}}]}]
    indexes, error = agent_overlays(undefined, US)
    assert indexes == [0] and error is not None and "tier" in error
