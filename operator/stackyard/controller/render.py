"""Pure functions from a Stack's spec to rows and canonical YAML."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from ..jsonshape import depth
from ..protocol import apply_rank
from ..yamldocs import dump_documents

MAX_RESOURCES = 500
# How deeply a resource may nest (objects and lists). The API server accepts far deeper input, but nothing a
# Stack ships needs it (a CRD's openAPIV3Schema, the deepest common case, stays well under), and rendering,
# diffing and applying each walk it: bounded where the input enters, never a RecursionError later.
MAX_DEPTH = 64
NAME_PATTERN = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
# Label syntax (Kubernetes: an optional DNS-subdomain prefix and "/", then a name of at most 63 characters;
# values empty or at most 63 of the same alphabet).
LABEL_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9]")
DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


class InvalidSpec(Exception):
    """Input that retrying cannot fix; becomes Stalled=True with `reason`. `status` holds fields the stall
    clears or sets (None clears: what was true before the stall is not true now)."""

    def __init__(self, reason: str, message: str, status: dict[str, Any] | None = None):
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.status = status or {}


def _check_resource(index: int, resource: Any) -> tuple[str, str, str, str]:
    where = f"spec.resources[{index}]"
    if not isinstance(resource, Mapping):
        raise InvalidSpec("InvalidResource", f"{where} must be an object, got {type(resource).__name__}")
    api_version, kind = resource.get("apiVersion"), resource.get("kind")
    if not isinstance(api_version, str) or not api_version:
        raise InvalidSpec("InvalidResource", f"{where}.apiVersion is required")
    if api_version.count("/") > 1 or api_version.startswith("/") or api_version.endswith("/"):
        raise InvalidSpec("InvalidResource", f"{where}.apiVersion {api_version!r} is not group/version")
    if not isinstance(kind, str) or not kind:
        raise InvalidSpec("InvalidResource", f"{where}.kind is required")
    metadata = resource.get("metadata")
    if not isinstance(metadata, Mapping):
        raise InvalidSpec("InvalidResource", f"{where}.metadata is required")
    name, namespace = metadata.get("name"), metadata.get("namespace", "")
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise InvalidSpec("InvalidResource", f"{where}.metadata.name {name!r} is not a valid Kubernetes name")
    if not isinstance(namespace, str) or (namespace and not NAME_PATTERN.match(namespace)):
        raise InvalidSpec("InvalidResource", f"{where}.metadata.namespace {namespace!r} is not a valid namespace")
    group = api_version.split("/")[0] if "/" in api_version else ""
    return group, kind, namespace, name


def validate_resources(resources: Any) -> list[Mapping[str, Any]]:
    """Check `spec.resources`; raise InvalidSpec naming the first bad item."""
    if resources is None:
        return []
    if not isinstance(resources, list):
        raise InvalidSpec("InvalidResources", "spec.resources must be a list of Kubernetes objects")
    if len(resources) > MAX_RESOURCES:
        raise InvalidSpec("TooManyResources", f"spec.resources has {len(resources)} items; at most {MAX_RESOURCES}")
    seen: dict[tuple[str, str, str, str], int] = {}
    for index, resource in enumerate(resources):
        nested = depth(resource)
        if nested > MAX_DEPTH:
            raise InvalidSpec("TooDeep", f"spec.resources[{index}] is nested {nested} levels deep; at most {MAX_DEPTH}")
        identity = _check_resource(index, resource)
        if identity in seen:
            group, kind, namespace, name = identity
            raise InvalidSpec(
                "DuplicateResource",
                f"spec.resources[{index}] and [{seen[identity]}] are both {kind} {namespace + '/' if namespace else ''}{name}",
            )
        seen[identity] = index
    return resources


def _sort_key(resource: Mapping[str, Any]) -> tuple:
    metadata = resource["metadata"]
    return (
        apply_rank(resource["kind"]),
        resource["apiVersion"],
        resource["kind"],
        metadata.get("namespace", ""),
        metadata["name"],
    )


def canonical_yaml(resources: list[Mapping[str, Any]]) -> str:
    """Multi-document YAML with sorted keys and a stable document order (Namespaces and CRDs first)."""
    return dump_documents(dict(doc) for doc in sorted(resources, key=_sort_key))


def render_stack(spec: Mapping[str, Any], extra: list[dict[str, Any]] | None = None) -> tuple[str, int]:
    """(canonical YAML, number of resources) for a Stack spec and the objects it ships besides its resources
    (the Secrets of `spec.secretRefs`, checked for duplicates with the rest)."""
    resources = spec.get("resources")
    if extra:
        resources = validate_resources(resources) + extra
    resources = validate_resources(resources)
    content = canonical_yaml(resources)
    return content, len(resources)


def validate_labels(labels: Any, where: str) -> list[str]:
    if labels is None:
        return []
    if not isinstance(labels, list) or not all(isinstance(x, str) and 0 < len(x) <= 255 for x in labels):
        raise InvalidSpec("InvalidLabels", f"{where} must be a list of non-empty strings of at most 255 characters")
    return labels


def validate_annotations(annotations: Any, where: str) -> dict[str, str]:
    if annotations is None:
        return {}
    if not isinstance(annotations, Mapping) or not all(
        isinstance(k, str) and 0 < len(k) <= 255 and isinstance(v, str) for k, v in annotations.items()
    ):
        raise InvalidSpec("InvalidAnnotations", f"{where} must map keys of 1-255 characters to strings")
    return dict(annotations)


def required_name(value: Any, where: str) -> str:
    """A required DNS-style name field, or InvalidSpec."""
    if not isinstance(value, str) or not NAME_PATTERN.match(value):
        raise InvalidSpec("InvalidSpec", f"{where} {value!r} must be a lowercase DNS name")
    return value


def validate_namespaces(namespaces: Any, where: str) -> list[str]:
    """A list of namespace names, or InvalidSpec."""
    if namespaces is None:
        return []
    if not isinstance(namespaces, list):
        raise InvalidSpec("InvalidSpec", f"{where} must be a list of namespace names")
    return [required_name(ns, f"{where}[{index}]") for index, ns in enumerate(namespaces)]


_SELECTOR_OPERATORS = {"In": "in", "NotIn": "notin"}


def selector_query(selector: Any, where: str) -> str:
    """A metav1.LabelSelector as the API's labelSelector query string; InvalidSpec names what is wrong.

    An empty selector selects everything (as in Kubernetes).
    """
    if not isinstance(selector, Mapping):
        raise InvalidSpec("InvalidSelector", f"{where} must be an object with matchLabels and/or matchExpressions")
    parts = []
    match_labels = selector.get("matchLabels") or {}
    if not isinstance(match_labels, Mapping):
        raise InvalidSpec("InvalidSelector", f"{where}.matchLabels must map label keys to values")
    for key, value in sorted(match_labels.items()):
        if not isinstance(value, str):
            raise InvalidSpec("InvalidSelector", f"{where}.matchLabels.{key} must be a string")
        _check_label(key, value, f"{where}.matchLabels")
        parts.append(f"{key}={value}")
    expressions = selector.get("matchExpressions") or []
    if not isinstance(expressions, list):
        raise InvalidSpec("InvalidSelector", f"{where}.matchExpressions must be a list")
    for index, expression in enumerate(expressions):
        at = f"{where}.matchExpressions[{index}]"
        if not isinstance(expression, Mapping) or not isinstance(expression.get("key"), str):
            raise InvalidSpec("InvalidSelector", f"{at} needs a key and an operator")
        key, operator, values = expression["key"], expression.get("operator"), expression.get("values") or []
        _check_label(key, "", at)
        if operator in _SELECTOR_OPERATORS:
            if not values or not all(isinstance(v, str) for v in values):
                raise InvalidSpec("InvalidSelector", f"{at}: operator {operator} needs a non-empty list of values")
            for value in values:
                _check_label(key, value, at)
            parts.append(f"{key} {_SELECTOR_OPERATORS[operator]} ({','.join(values)})")
        elif operator in ("Exists", "DoesNotExist"):
            if values:
                raise InvalidSpec("InvalidSelector", f"{at}: operator {operator} takes no values")
            parts.append(key if operator == "Exists" else f"!{key}")
        else:
            raise InvalidSpec("InvalidSelector", f"{at}: unknown operator {operator!r} (In, NotIn, Exists, DoesNotExist)")
    return ",".join(parts)


def _check_label(key: str, value: str, where: str) -> None:
    """InvalidSelector unless `key` and `value` are what Kubernetes accepts as a label (a selector on anything
    else selects nothing, silently)."""
    prefix, _, name = key.rpartition("/")
    if (prefix and (len(prefix) > 253 or not DNS_SUBDOMAIN.fullmatch(prefix))) or not LABEL_NAME.fullmatch(name):
        raise InvalidSpec("InvalidSelector", f"{where}: {key!r} is not a label key (an optional DNS prefix and '/',"
                                             " then at most 63 alphanumerics, '-', '_' or '.')")
    if value and not LABEL_NAME.fullmatch(value):
        raise InvalidSpec("InvalidSelector", f"{where}: {value!r} is not a label value (at most 63 alphanumerics,"
                                             " '-', '_' or '.', starting and ending alphanumeric)")
