"""Validate objects against stackyard's CRD schemas as an API server would (structure, bounds, CEL rules).

kmock does not validate, so tests check objects against the schemas here:
the OpenAPI part with jsonschema, the x-kubernetes-validations rules with cel-python.
"""

from __future__ import annotations

from typing import Any

import celpy
import jsonschema

from .emulator import load_crds
from .structural import to_json_schema

def _cel_errors(schema: dict[str, Any], value: Any, old: Any, path: str) -> list[str]:
    errors: list[str] = []
    env = celpy.Environment()
    for rule in schema.get("x-kubernetes-validations", []):
        uses_old = "oldSelf" in rule["rule"]
        if uses_old and old is None:
            continue  # transition rules apply to updates only
        activation = {"self": celpy.json_to_cel(value)}
        if uses_old:
            activation["oldSelf"] = celpy.json_to_cel(old)
        result = env.program(env.compile(rule["rule"])).evaluate(activation)
        if not (isinstance(result, celpy.celtypes.BoolType) and bool(result)):
            errors.append(f"{path}: {rule.get('message', rule['rule'])}")
    if isinstance(value, dict):
        for name, sub in (schema.get("properties") or {}).items():
            if name in value:
                errors += _cel_errors(sub, value[name], old.get(name) if isinstance(old, dict) else None, f"{path}.{name}")
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(value):
            errors += _cel_errors(schema["items"], item, None, f"{path}[{index}]")
    return errors


def crd_for(kind: str) -> dict[str, Any]:
    for crd in load_crds():
        if crd["spec"]["names"]["kind"] == kind:
            return crd
    raise KeyError(kind)


def validate(obj: dict[str, Any], old: dict[str, Any] | None = None) -> list[str]:
    """Every reason the API server would reject `obj` (an update of `old` when given)."""
    crd = crd_for(obj["kind"])
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    validator = jsonschema.Draft7Validator(to_json_schema(schema))
    errors = [f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in validator.iter_errors(obj)]
    if not errors:
        errors += _cel_errors(schema, obj, old, "<root>")
    return errors
