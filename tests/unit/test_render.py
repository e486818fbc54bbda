"""Rendering a Stack spec and label selectors: pure functions, no cluster, no database."""

from __future__ import annotations

import pytest
import yaml

from stackyard.controller.render import InvalidSpec, render_stack, selector_query
from stackyard.selectors import selector_matches

from ..builders import configmap


def test_canonical_yaml_orders_namespaces_and_crds_first_and_is_stable():
    crd = {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition", "metadata": {"name": "w.x"}}
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "apps"}}
    content, count = render_stack({"resources": [configmap("b"), crd, configmap("a"), namespace]})
    kinds = [doc["kind"] for doc in yaml.safe_load_all(content)]
    assert kinds == ["Namespace", "CustomResourceDefinition", "ConfigMap", "ConfigMap"] and count == 4
    reordered, _ = render_stack({"resources": [namespace, configmap("a"), crd, configmap("b")]})
    assert reordered == content, "the order of spec.resources does not make a new version"


def test_text_outside_ascii_survives_rendering():
    data = {"emoji": "🚀", "cjk": "部署", "combining": "e\u0301"}
    content, _ = render_stack({"resources": [configmap("u", data)]})
    assert "部署" in content, "BMP text is written as is (libyaml escapes characters beyond it, validly)"
    assert next(yaml.safe_load_all(content))["data"] == data


@pytest.mark.parametrize("resources,reason", [
    ([configmap("a"), configmap("a")], "DuplicateResource"),
    ([configmap("Bad_Name")], "InvalidResource"),
    ("not a list", "InvalidResources"),
])
def test_invalid_resources_name_the_problem(resources, reason):
    with pytest.raises(InvalidSpec) as refused:
        render_stack({"resources": resources})
    assert refused.value.reason == reason


def test_selector_query_and_matching_agree_with_kubernetes():
    selector = {"matchLabels": {"region": "eu"},
                "matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["canary"]},
                                     {"key": "gpu", "operator": "DoesNotExist"},
                                     {"key": "zone", "operator": "In", "values": ["a", "b"]},
                                     {"key": "team", "operator": "Exists"}]}
    assert selector_query(selector, "s") == "region=eu,tier notin (canary),!gpu,zone in (a,b),team"
    assert selector_matches(selector, {"region": "eu", "zone": "a", "team": "x"})
    assert not selector_matches(selector, {"region": "eu", "zone": "a", "team": "x", "tier": "canary"})
    assert not selector_matches(selector, {"region": "eu", "zone": "c", "team": "x"})
    assert not selector_matches(selector, {"region": "eu", "zone": "a", "team": "x", "gpu": "1"})
    assert selector_matches({}, {"anything": "goes"}), "an empty selector selects everything"


@pytest.mark.parametrize("selector,problem", [
    ({"matchExpressions": [{"key": "a", "operator": "In", "values": []}]}, "non-empty"),
    ({"matchExpressions": [{"key": "a", "operator": "Near"}]}, "unknown operator"),
    ({"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]}, "takes no values"),
    ("region=eu", "must be an object"),
])
def test_malformed_selectors_are_refused_with_a_reason(selector, problem):
    with pytest.raises(InvalidSpec) as refused:
        selector_query(selector, "spec.agentSelector")
    assert refused.value.reason == "InvalidSelector" and problem in refused.value.message


def test_input_nested_deeper_than_the_bound_stalls_instead_of_recursing():
    deep: dict = {}
    leaf = deep
    for _ in range(400):  # the API server accepts this; rendering it used to raise RecursionError
        leaf["k"] = {}
        leaf = leaf["k"]
    with pytest.raises(InvalidSpec) as raised:
        render_stack({"resources": [configmap("deep", {"x": "y"}) | {"data": deep}]})
    assert raised.value.reason == "TooDeep" and "401 levels" in raised.value.message
    fine = {"a": {"b": {"c": {"d": "e"}}}}
    assert render_stack({"resources": [configmap("ok") | {"data": fine}]})[1] == 1


@pytest.mark.parametrize("selector,fragment", [
    ({"matchLabels": {"region zone": "eu"}}, "not a label key"),
    ({"matchLabels": {"region": "e u"}}, "not a label value"),
    ({"matchLabels": {"x" * 64: "eu"}}, "not a label key"),
    ({"matchExpressions": [{"key": "Tier!", "operator": "Exists"}]}, "not a label key"),
    ({"matchExpressions": [{"key": "tier", "operator": "In", "values": ["a b"]}]}, "not a label value"),
])
def test_a_selector_on_something_no_label_can_be_is_refused_not_silently_empty(selector, fragment):
    with pytest.raises(InvalidSpec) as raised:
        selector_query(selector, "spec.agentSelector")
    assert raised.value.reason == "InvalidSelector" and fragment in raised.value.message
    assert selector_query({"matchLabels": {"stackyard.dev/region": "eu-west_1.a"}}, "s") == "stackyard.dev/region=eu-west_1.a"
