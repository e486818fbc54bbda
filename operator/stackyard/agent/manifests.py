"""Pure functions over deployment-object YAML: parsing, ordering, decorating, inventories."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from ..protocol import apply_rank

STACK_LABEL = "stackyard.dev/stack"
DEPLOYMENT_OBJECT_ANNOTATION = "stackyard.dev/deployment-object-id"
CHECKSUM_ANNOTATION = "stackyard.dev/checksum"
INVENTORY_LABEL = "stackyard.dev/inventory"
INVENTORY_PREFIX = "stackyard-inventory-"


class BadManifest(Exception):
    """A deployment object whose YAML cannot be applied as written."""


@dataclass(frozen=True, order=True)
class ObjectRef:
    """Identity of one applied object (namespace empty for cluster-scoped or defaulted later)."""

    api_version: str
    kind: str
    namespace: str
    name: str

    def to_json(self) -> list[str]:
        return [self.api_version, self.kind, self.namespace, self.name]

    @classmethod
    def from_json(cls, value: Any) -> "ObjectRef":
        api_version, kind, namespace, name = value
        return cls(str(api_version), str(kind), str(namespace), str(name))

    def __str__(self) -> str:
        return f"{self.kind} {self.namespace + '/' if self.namespace else ''}{self.name}"


def ref_of(obj: Mapping[str, Any]) -> ObjectRef:
    meta = obj.get("metadata") or {}
    return ObjectRef(obj["apiVersion"], obj["kind"], meta.get("namespace") or "", meta["name"])


def parse_objects(content: str) -> list[dict[str, Any]]:
    """The Kubernetes objects of a deployment object, Namespaces and CRDs first; BadManifest names the problem."""
    try:
        documents = [doc for doc in yaml.safe_load_all(content) if doc is not None]
    except yaml.YAMLError as exc:
        raise BadManifest(f"the YAML does not parse: {exc}") from None
    objects = []
    for index, doc in enumerate(documents):
        if not isinstance(doc, dict):
            raise BadManifest(f"document {index} is not an object")
        meta = doc.get("metadata")
        if not doc.get("apiVersion") or not doc.get("kind") or not isinstance(meta, dict) or not meta.get("name"):
            raise BadManifest(f"document {index} needs apiVersion, kind and metadata.name")
        objects.append(doc)
    return sorted(objects, key=lambda o: apply_rank(o["kind"]))


def decorate(obj: Mapping[str, Any], stack_id: str, deployment_object_id: str, checksum: str) -> dict[str, Any]:
    """A copy of `obj` labelled with its stack and annotated with the deployment object it came from."""
    result = json.loads(json.dumps(obj))
    meta = result.setdefault("metadata", {})
    meta.setdefault("labels", {})[STACK_LABEL] = stack_id
    annotations = meta.setdefault("annotations", {})
    annotations[DEPLOYMENT_OBJECT_ANNOTATION] = deployment_object_id
    annotations[CHECKSUM_ANNOTATION] = checksum
    result.pop("status", None)
    return result


@dataclass(frozen=True)
class Inventory:
    """What this agent applied for one stack, kept in the target cluster as a ConfigMap."""

    stack_id: str
    stack_name: str
    deployment_object_id: str
    checksum: str
    applied: bool
    objects: frozenset[ObjectRef]
    applied_as: str = ""  # the user the objects were applied as (impersonated); "": the agent itself

    def configmap(self, namespace: str) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": inventory_name(self.stack_id),
                "namespace": namespace,
                "labels": {INVENTORY_LABEL: "true", STACK_LABEL: self.stack_id,
                           "app.kubernetes.io/managed-by": "stackyard-agent"},
            },
            "data": {
                "stack-id": self.stack_id,
                "stack-name": self.stack_name,
                "deployment-object-id": self.deployment_object_id,
                "checksum": self.checksum,
                "applied": "true" if self.applied else "false",
                "objects": json.dumps(sorted(r.to_json() for r in self.objects)),
                "applied-as": self.applied_as,
            },
        }

    @classmethod
    def from_configmap(cls, configmap: Mapping[str, Any]) -> "Inventory | None":
        data = configmap.get("data") or {}
        try:
            return cls(
                stack_id=data["stack-id"],
                stack_name=data.get("stack-name", ""),
                deployment_object_id=data.get("deployment-object-id", ""),
                checksum=data.get("checksum", ""),
                applied=data.get("applied") == "true",
                objects=frozenset(ObjectRef.from_json(v) for v in json.loads(data.get("objects", "[]"))),
                applied_as=data.get("applied-as", ""),
            )
        except (KeyError, ValueError, TypeError):
            return None


def inventory_name(stack_id: str) -> str:
    return f"{INVENTORY_PREFIX}{stack_id}"


def refs(objects: Iterable[Mapping[str, Any]]) -> frozenset[ObjectRef]:
    return frozenset(ref_of(o) for o in objects)
