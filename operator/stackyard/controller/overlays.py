"""A Stack's `spec.overlays`, checked before they are stored with a version, and what they mean for each agent
in its status (rendering itself is `stackyard.overlays`, shared with the API)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..overlays import (
    Agent,
    BadTemplate,
    UndefinedVariable,
    applicable,
    patches_for,
    strings,
    targets,
    variables_in,
)
from .render import InvalidSpec, selector_query

MAX_OVERLAYS = 32
MAX_PATCHES = 32
IDENTITY = ("apiVersion", "kind")
IDENTITY_METADATA = ("name", "namespace")


def _invalid(where: str, message: str) -> InvalidSpec:
    return InvalidSpec("InvalidOverlay", f"{where}: {message}")


def _check_patch(where: str, patch: Any, document: Mapping[str, Any]) -> None:
    if not isinstance(patch, Mapping):
        raise _invalid(f"{where}.patch", "must be an object (a JSON merge patch of the target)")
    for key in IDENTITY:
        if key in patch and patch[key] != document.get(key):
            raise _invalid(f"{where}.patch", f"changes {key}; an overlay may not change what object it patches")
    metadata = patch.get("metadata", {})
    if "metadata" in patch and not isinstance(metadata, Mapping):
        raise _invalid(f"{where}.patch", "replaces metadata; an overlay may not change the object's name or namespace")
    current = document.get("metadata") or {}
    for key in IDENTITY_METADATA:
        if key in metadata and metadata[key] != current.get(key):
            raise _invalid(f"{where}.patch", f"changes metadata.{key}; an overlay may not change what object it"
                                             " patches")
    try:
        for text in strings(patch):
            variables_in(text)
    except BadTemplate as exc:
        raise _invalid(f"{where}.patch", str(exc)) from None


def validate_overlays(spec: Mapping[str, Any], resources: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]] | None:
    """`spec.overlays` as stored with the version (None when there are none), or InvalidSpec reason
    InvalidOverlay naming the overlay: each target must name exactly one of the Stack's objects (not a Secret:
    a patch is stored as written, so Secret data in it would not be sealed), and no patch may change the
    identity of what it patches."""
    overlays = spec.get("overlays")
    if not overlays:
        return None
    if not isinstance(overlays, list) or len(overlays) > MAX_OVERLAYS:
        raise InvalidSpec("InvalidOverlay", f"spec.overlays must be a list of at most {MAX_OVERLAYS} overlays")
    stored = []
    for index, overlay in enumerate(overlays):
        where = f"spec.overlays[{index}]"
        if not isinstance(overlay, Mapping):
            raise _invalid(where, "must be an object with agentSelector and patches")
        selector = overlay.get("agentSelector") or {}
        try:
            selector_query(selector, f"{where}.agentSelector")
        except InvalidSpec as exc:
            raise InvalidSpec("InvalidOverlay", exc.message) from None
        patches = overlay.get("patches")
        if not isinstance(patches, list) or not patches or len(patches) > MAX_PATCHES:
            raise _invalid(f"{where}.patches", f"must list 1 to {MAX_PATCHES} patches")
        checked = []
        for number, item in enumerate(patches):
            at = f"{where}.patches[{number}]"
            target = item.get("target") if isinstance(item, Mapping) else None
            if not isinstance(target, Mapping) or not isinstance(target.get("kind"), str) or not isinstance(
                    target.get("name"), str):
                raise _invalid(f"{at}.target", "needs kind and name (apiVersion and namespace optional)")
            named = [doc for doc in resources if targets(target, doc)]
            description = f"{target.get('kind')} {target.get('name')}"
            if not named:
                raise _invalid(f"{at}.target", f"names no resource of this Stack ({description})")
            if len(named) > 1:
                raise _invalid(f"{at}.target", f"names {len(named)} resources ({description}): add apiVersion or"
                                               " namespace")
            if named[0].get("kind") == "Secret" and named[0].get("apiVersion") == "v1":
                raise _invalid(f"{at}.target", "patches a Secret: its values would be stored unsealed; ship per"
                                               "-cluster Secrets through spec.secretRefs in separate Stacks")
            _check_patch(at, item.get("patch"), named[0])
            checked.append({"target": {k: target[k] for k in ("apiVersion", "kind", "name", "namespace")
                                       if target.get(k) is not None},
                            "patch": item["patch"]})
        stored.append({"agentSelector": dict(selector), "patches": checked})
    return stored


def agent_overlays(overlays: Sequence[Mapping[str, Any]] | None, agent: Agent) -> tuple[list[int], str | None]:
    """(indexes of the overlays that apply to the agent, why its rendering fails or None): a Stack's status."""
    if not overlays:
        return [], None
    indexes = applicable(overlays, agent.labels)
    try:
        patches_for(overlays, agent)
    except UndefinedVariable as exc:
        return indexes, str(exc)
    return indexes, None
