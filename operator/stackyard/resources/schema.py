"""Builders of OpenAPI v3 structural schemas and CustomResourceDefinitions (docs/architecture.md, "CRDs").

Each builder returns a plain dict, in the key order the YAML is written in, so the three kinds read like the
schema they produce; the pieces every kind shares (conditions, label selectors, Kopf's bookkeeping, the
state and health enums) exist once, here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .. import protocol
from ..config import GROUP, VERSION

Schema = dict[str, Any]

DNS_NAME = "^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"  # a Kubernetes object name (DNS subdomain)
DNS_LABEL = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"  # a namespace name (DNS label)
TARGET_STATES = ["Pending", "Applied", "Failed", "Deleting"]
HEALTHS = list(protocol.HEALTHS)
AGENT_PHASES = list(protocol.AGENT_PHASES)


def _with(schema: Schema, description: str | None, extra: Mapping[str, Any]) -> Schema:
    if description is not None:
        schema["description"] = description
    for key, value in extra.items():
        schema[_EXTENSIONS.get(key, key)] = value
    return schema


# Keyword arguments for the Kubernetes extensions, which are not Python identifiers.
_EXTENSIONS = {
    "list_type": "x-kubernetes-list-type",
    "list_map_keys": "x-kubernetes-list-map-keys",
    "preserve_unknown": "x-kubernetes-preserve-unknown-fields",
    "embedded": "x-kubernetes-embedded-resource",
    "int_or_string": "x-kubernetes-int-or-string",
    "validations": "x-kubernetes-validations",
}


def string(description: str | None = None, **extra: Any) -> Schema:
    return _with({"type": "string"}, description, extra)


def timestamp(description: str) -> Schema:
    return string(description, format="date-time")


def integer(description: str | None = None, **extra: Any) -> Schema:
    return _with({"type": "integer"}, description, extra)


def sequence(description: str) -> Schema:
    """A deployment object's sequence number."""
    return integer(description, format="int64")


def boolean(description: str | None = None, **extra: Any) -> Schema:
    return _with({"type": "boolean"}, description, extra)


def obj(description: str | None = None, properties: Mapping[str, Schema] | None = None,
        required: Sequence[str] = (), **extra: Any) -> Schema:
    schema: Schema = {"type": "object"}
    if required:
        schema["required"] = list(required)
    if properties:
        schema["properties"] = dict(properties)
    return _with(schema, description, extra)


def array(description: str | None, items: Schema, **extra: Any) -> Schema:
    return _with({"type": "array", "items": items}, description, extra)


def any_value(description: str, **extra: Any) -> Schema:
    """A value of no fixed type (int-or-string and the like)."""
    return _with({}, description, extra)


def rule(expression: str, message: str, reason: str | None = None) -> dict[str, str]:
    """A CEL validation rule."""
    found = {"rule": expression, "message": message}
    if reason is not None:
        found["reason"] = reason
    return found


def name(description: str) -> Schema:
    return string(description, minLength=1, maxLength=253, pattern=DNS_NAME)


def label_selector(description: str, what: str = "an Agent") -> Schema:
    """A metav1.LabelSelector."""
    requirement = obj(None, {
        "key": string("The label key.", minLength=1, maxLength=317),
        "operator": string("In, NotIn, Exists or DoesNotExist.", enum=["In", "NotIn", "Exists", "DoesNotExist"]),
        "values": array("Values for In and NotIn.", string(maxLength=63), maxItems=64),
    }, required=["key", "operator"], validations=[rule(
        "self.operator in ['In', 'NotIn'] ? size(self.values) > 0 : !has(self.values) || size(self.values) == 0",
        "In and NotIn need values; Exists and DoesNotExist take none")])
    return obj(description, {
        "matchLabels": obj(f"Labels {what} must have, all of them.", additionalProperties=string(maxLength=63)),
        "matchExpressions": array("Label requirements, all of which must hold.", requirement, maxItems=16),
    })


def conditions(types: str) -> Schema:
    """The standard conditions list (kstatus): keyed by type, each with its reason, message and times."""
    condition = obj(None, {
        "type": string(f"Condition type: {types}.", maxLength=316),
        "status": string("True, False or Unknown.", enum=["True", "False", "Unknown"]),
        "reason": string("Machine-readable CamelCase reason of the last transition.", maxLength=1024),
        "message": string("Human-readable detail of the last transition.", maxLength=32768),
        "lastTransitionTime": timestamp("When the status last changed."),
        "observedGeneration": integer("The metadata.generation this condition was computed for.", format="int64",
                                      minimum=0),
    }, required=["type", "status", "lastTransitionTime", "reason", "message"])
    return array("Standard conditions: Ready (True when done, False with a reason on failure), Reconciling and"
                 " Stalled (present and True only while abnormal).", condition, list_type="map",
                 list_map_keys=["type"], maxItems=16)


def observed_generation() -> Schema:
    return integer("The metadata.generation the operator last reconciled.", format="int64")


def kopf_state() -> Schema:
    return obj("The operator's own bookkeeping (a digest of the last handled spec, the progress of retried"
               " handlers).", preserve_unknown=True)


def last_drift(what: str = "this stack") -> Schema:
    return obj(f"The agent's latest repair of drift in {what}: someone changed, removed or deleted what it"
               " applied.", {
                   "time": timestamp("When the agent reported it."),
                   "message": string("The objects and fields, and who changed them when known (truncated)."),
               })


def agent_entry() -> Schema:
    """One agent's line in a Stack's or a selector AgentTarget's `agents` list."""
    return obj(None, {
        "agentName": string("Name of the agent."),
        "clusterName": string("Cluster of the agent."),
        "state": string("Pending, Applied, Failed or Deleting.", enum=TARGET_STATES),
        "sequenceId": sequence("Sequence the state refers to."),
        "message": string("The agent's last message (truncated)."),
        "lastTransitionTime": timestamp("When the state last changed."),
        "health": string("Health the agent reports for the version it runs (kstatus rules over the stack's"
                         " objects); Degraded when it failed to apply it; Unknown until it reports one.",
                         enum=HEALTHS),
        "healthMessage": string("The first unhealthy object and why."),
        "lastDrift": last_drift(),
        "overlays": array("Indexes of the Stack's spec.overlays that apply to this agent (by its labels).",
                          integer(minimum=0), maxItems=32),
        "checksum": string("Checksum of what the agent applied: its own rendering when overlays apply."),
    })


def column(title: str, type_: str, path: str, priority: int | None = None) -> dict[str, Any]:
    """A printer column of `kubectl get`."""
    found: dict[str, Any] = {"name": title, "type": type_}
    if priority is not None:
        found["priority"] = priority
    found["jsonPath"] = path
    return found


def ready_column(priority: int | None = None) -> dict[str, Any]:
    return column("Ready", "string", '.status.conditions[?(@.type=="Ready")].status', priority)


def age_column() -> dict[str, Any]:
    return column("Age", "date", ".metadata.creationTimestamp")


def crd(kind: str, plural: str, short_name: str, description: str, spec: Schema, status: Schema,
        columns: Sequence[Mapping[str, Any]], validations: Sequence[Mapping[str, str]] = ()) -> dict[str, Any]:
    """A namespaced CRD of group stackyard.dev, version v1alpha1, category stackyard, with the status
    subresource."""
    root: Schema = {"type": "object", "description": description, "required": ["spec"], "properties": {
        "apiVersion": string(), "kind": string(), "metadata": obj(), "spec": spec, "status": status}}
    if validations:
        root["x-kubernetes-validations"] = list(validations)
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{GROUP}",
                     "labels": {"app.kubernetes.io/name": "stackyard", "app.kubernetes.io/part-of": "stackyard"}},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {"kind": kind, "listKind": f"{kind}List", "plural": plural, "singular": kind.lower(),
                      "shortNames": [short_name], "categories": ["stackyard"]},
            "versions": [{"name": VERSION, "served": True, "storage": True, "subresources": {"status": {}},
                          "additionalPrinterColumns": list(columns), "schema": {"openAPIV3Schema": root}}],
        },
    }
