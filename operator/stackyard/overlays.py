"""Per-agent rendering of a Stack's overlays (README, "Per-cluster customization"; docs/architecture.md,
"Overlays"): shared by the operator, which validates them and reports which apply to each agent, and the API,
which renders each agent's content.

An overlay is `{agentSelector, patches: [{target: {apiVersion?, kind, name, namespace?}, patch}]}`, stored
validated with the deployment object. For an agent, every overlay whose selector matches its labels applies,
in the order written; each patch is a JSON merge patch (RFC 7386) of the one resource its target names.

Variables appear in the string values of patches only: `{{cluster.name}}`, `{{agent.name}}` and
`{{agent.labels.KEY}}`. `{{{{` writes a literal `{{`. A value is always a string (a whole-string variable
too: `"{{agent.labels.replicas}}"` stays the string "3"). No expressions, no functions.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .selectors import selector_matches
from .yamldocs import dump_documents, load_documents

# `{{{{` (a literal `{{`), or a variable: `{{` name `}}` (names are label keys at most, so no `}` inside).
_TOKEN = re.compile(r"\{\{\{\{|\{\{([^{}]*)\}\}|\{\{")
_LABEL_VARIABLE = "agent.labels."
NAMES = ("cluster.name", "agent.name")


class BadTemplate(ValueError):
    """A string whose `{{...}}` is not a variable stackyard knows (a fault of the Stack's spec)."""


class UndefinedVariable(Exception):
    """A variable this agent has no value for (a label it does not carry): its rendering fails, others go on."""

    def __init__(self, overlay: int, variable: str):
        super().__init__(f"overlay {overlay}: {{{{{variable}}}}} is undefined for this agent (it has no label"
                         f" {variable[len(_LABEL_VARIABLE):]!r})" if variable.startswith(_LABEL_VARIABLE)
                         else f"overlay {overlay}: {{{{{variable}}}}} is undefined")
        self.overlay = overlay
        self.variable = variable


@dataclass(frozen=True)
class Agent:
    """What a rendering may depend on."""

    name: str
    cluster: str
    labels: Mapping[str, str]

    def value(self, variable: str) -> str | None:
        if variable == "cluster.name":
            return self.cluster
        if variable == "agent.name":
            return self.name
        return self.labels.get(variable[len(_LABEL_VARIABLE):])


def variables_in(text: str) -> list[str]:
    """The variables a string uses; BadTemplate for a `{{` that is neither a variable nor the escape."""
    found = []
    for match in _TOKEN.finditer(text):
        if match.group(0) == "{{{{":
            continue
        name = match.group(1)
        if name is None:
            raise BadTemplate(f"{text[:80]!r}: an unclosed '{{{{' (write '{{{{{{{{' for a literal '{{{{')")
        name = name.strip()
        if name not in NAMES and not (name.startswith(_LABEL_VARIABLE) and len(name) > len(_LABEL_VARIABLE)):
            raise BadTemplate(f"{{{{{name}}}}} is not a variable: use cluster.name, agent.name or agent.labels.KEY"
                              " (write '{{{{{{{{' for a literal '{{{{')")
        found.append(name)
    return found


def substitute(text: str, agent: Agent, overlay: int) -> str:
    """`text` with its variables replaced by the agent's values (UndefinedVariable when one has none)."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "{{{{":
            return "{{"
        name = (match.group(1) or "").strip()
        value = agent.value(name)
        if value is None:
            raise UndefinedVariable(overlay, name)
        return value

    return _TOKEN.sub(replace, text) if "{{" in text else text


def strings(value: Any) -> Iterator[str]:
    """Every string value (not key) in a JSON value."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings(item)


def _substituted(value: Any, agent: Agent, overlay: int) -> Any:
    if isinstance(value, str):
        return substitute(value, agent, overlay)
    if isinstance(value, Mapping):
        return {key: _substituted(item, agent, overlay) for key, item in value.items()}
    if isinstance(value, list):
        return [_substituted(item, agent, overlay) for item in value]
    return value


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: an object patch merges key by key (null deletes), anything else replaces (lists too)."""
    if not isinstance(patch, Mapping):
        return patch
    merged = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = merge_patch(merged.get(key), value)
    return merged


def targets(target: Mapping[str, Any], document: Mapping[str, Any]) -> bool:
    """Whether a patch's target names this object (apiVersion and namespace only when given)."""
    metadata = document.get("metadata") or {}
    return (document.get("kind") == target.get("kind") and metadata.get("name") == target.get("name")
            and target.get("apiVersion") in (None, document.get("apiVersion"))
            and target.get("namespace") in (None, metadata.get("namespace", "")))


def applicable(overlays: Sequence[Mapping[str, Any]], labels: Mapping[str, str]) -> list[int]:
    """Indexes of the overlays whose selector matches these labels, in order."""
    return [index for index, overlay in enumerate(overlays) if selector_matches(overlay.get("agentSelector") or {},
                                                                                labels)]


def patches_for(overlays: Sequence[Mapping[str, Any]], agent: Agent) -> tuple[list[int], list[tuple[Mapping[str, Any], Any]]]:
    """(indexes of the overlays that apply, their (target, patch) pairs with variables substituted), or
    UndefinedVariable."""
    indexes = applicable(overlays, agent.labels)
    pairs = [(patch["target"], _substituted(patch["patch"], agent, index))
             for index in indexes for patch in overlays[index].get("patches") or ()]
    return indexes, pairs


@dataclass(frozen=True)
class Rendering:
    """What one agent receives for one deployment object: the content and its checksum (the base ones when no
    overlay applies) and the overlays that applied."""

    content: str
    checksum: str
    overlays: list[int]


def render(content: str, checksum: str, overlays: Sequence[Mapping[str, Any]] | None, agent: Agent) -> Rendering:
    """The agent's rendering of a deployment object (UndefinedVariable when one of its variables has no value).

    Its checksum is the sha256 of the base checksum and the substituted patches: it changes exactly when what
    the agent receives changes, and reveals nothing the base checksum does not (it is an HMAC for content with
    Secret data, and overlays may not patch Secrets).
    """
    if not overlays:
        return Rendering(content, checksum, [])
    indexes, pairs = patches_for(overlays, agent)
    if not pairs:
        return Rendering(content, checksum, indexes)
    documents = load_documents(content)
    for target, patch in pairs:
        for position, document in enumerate(documents):
            if isinstance(document, Mapping) and targets(target, document):
                documents[position] = merge_patch(document, patch)
    digest = hashlib.sha256(checksum.encode())
    digest.update(json.dumps([[t, p] for t, p in pairs], sort_keys=True, separators=(",", ":")).encode())
    return Rendering(dump_documents(documents), digest.hexdigest(), indexes)
