"""Structural schemas as the API server applies them to custom resources: pruning of unknown fields, and
validation of types, enums and bounds.

https://kubernetes.io/docs/tasks/extend-kubernetes/custom-resources/custom-resource-definitions/#field-pruning
The API server silently drops every field a structural schema does not declare (unless a node says
`x-kubernetes-preserve-unknown-fields`), on create, update and status writes alike, and refuses (422) a value of
the wrong type, outside its enum or its bounds. CEL rules are checked by the tests against the schemas
themselves (tests/crd_schema.py), not here.
"""

from __future__ import annotations

import copy
from typing import Any

import jsonschema

UNSUPPORTED = {"x-kubernetes-validations", "x-kubernetes-list-type", "x-kubernetes-list-map-keys", "default",
               "x-kubernetes-preserve-unknown-fields", "x-kubernetes-embedded-resource", "x-kubernetes-int-or-string",
               "nullable"}


def to_json_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """An OpenAPI v3 structural schema as plain JSON Schema (unknown fields pruned before: allowed here)."""
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in UNSUPPORTED:
            continue
        if key == "properties":
            out[key] = {name: to_json_schema(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            out[key] = to_json_schema(value)
        elif key == "format" and value in ("int64", "int32"):
            continue
        else:
            out[key] = copy.deepcopy(value)
    if schema.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
        if "enum" in out:
            out["enum"] = [*out["enum"], None]
    if schema.get("x-kubernetes-embedded-resource"):
        out["required"] = sorted(set(out.get("required", [])) | {"apiVersion", "kind"})
        out.setdefault("properties", {}).setdefault("apiVersion", {"type": "string", "minLength": 1})
        out["properties"].setdefault("kind", {"type": "string", "minLength": 1})
        out["properties"].setdefault("metadata", {"type": "object"})
    return out


def prune(value: Any, schema: dict[str, Any]) -> Any:
    """`value` without the fields `schema` does not declare (what the API server stores)."""
    properties = schema.get("properties")
    if isinstance(value, dict):
        if schema.get("x-kubernetes-preserve-unknown-fields"):
            return {k: prune(v, properties[k]) if properties and k in properties else v for k, v in value.items()}
        if properties is not None:
            return {k: prune(v, properties[k]) for k, v in value.items() if k in properties}
        additional = schema.get("additionalProperties")
        if isinstance(additional, dict):
            return {k: prune(v, additional) for k, v in value.items()}
        return {} if schema.get("type") == "object" else value
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [prune(item, schema["items"]) for item in value]
    return value


def apply_schema(obj: dict[str, Any], schema: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """(the object as stored, the reasons the API server would refuse it): spec and status pruned and validated;
    apiVersion, kind and metadata are the API server's own (ObjectMeta), not the CRD's."""
    stored = dict(obj)
    properties = schema.get("properties") or {}
    for part in ("spec", "status"):
        if part in stored and part in properties:
            stored[part] = prune(stored[part], properties[part])
        elif part in stored:
            del stored[part]
    checked = {k: v for k, v in stored.items() if k in ("spec", "status")}
    root = {"type": "object", "properties": {k: properties[k] for k in checked}}
    validator = jsonschema.Draft7Validator(to_json_schema(root))
    errors = [f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"[:500]
              for e in validator.iter_errors(checked)]
    return stored, errors
