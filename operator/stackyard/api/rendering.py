"""What each agent receives for a deployment object: its Secret data opened, its overlays rendered for the
agent's name, cluster and labels (docs/architecture.md, "Secrets" and "Overlays").

Opening and rendering both parse and write the YAML again (about 1.5 ms for a stack of six objects), so each
process keeps its results, least recently used first out, within a budget of characters: opened contents by
(deployment object, checksum), renderings also by the agent's name, cluster and labels. A row's opened text
never changes (a re-seal by `stackyard db rotate-key` changes its checksum, which is part of the key), and a
rendering depends on nothing but what its key holds, so no entry outlives what it was made from. The process
holds the key that opens them anyway; the cache adds no new place a value can be read from outside it.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass, field

from ..encryption import EncryptionError, Keyring, is_sealed, open_content
from ..logs import Episodes
from ..overlays import Agent, Rendering, render
from ..store import DesiredStack

log = logging.getLogger(__name__)


class KeyUnavailable(Exception):
    """Sealed content this process cannot open; the message names the key, never a value."""


@dataclass
class Renderer:
    """The API's keyring (None: no key file) and its cache of opened contents and renderings."""

    keyring: Keyring | None
    budget: int = 32 * 1024 * 1024  # characters of YAML kept
    episodes: Episodes = field(default_factory=Episodes)
    _cache: OrderedDict[Hashable, Rendering] = field(default_factory=OrderedDict)
    _size: int = 0

    def for_agent(self, stack: DesiredStack, agent_name: str, cluster_name: str) -> Rendering:
        """The stack as this agent receives it: KeyUnavailable when its Secret data cannot be opened,
        `overlays.UndefinedVariable` when the agent lacks a value one of its overlays uses."""
        opened = self.open(stack.deployment_object_id, stack.yaml_checksum, stack.yaml_content)
        if not stack.overlays:
            return Rendering(opened, stack.yaml_checksum, [])
        labels = stack.agent_labels or {}
        key = (stack.deployment_object_id, stack.yaml_checksum, agent_name, cluster_name,
               json.dumps(labels, sort_keys=True))
        cached = self._get(key)
        if cached is None:
            cached = render(opened, stack.yaml_checksum, stack.overlays, Agent(agent_name, cluster_name, labels))
            self._keep(key, cached)
        return cached

    def open(self, deployment_object_id: uuid.UUID, checksum: str, content: str) -> str:
        """`content` with its sealed values opened (as it is when nothing is sealed), or KeyUnavailable."""
        if not is_sealed(content):
            return content
        key = (deployment_object_id, checksum)
        cached = self._get(key)
        if cached is not None:
            return cached.content
        if self.keyring is None:
            raise KeyUnavailable("this stack holds encrypted Secret data and the API has no encryption key"
                                 " (--encryption-key-file)")
        try:
            self.keyring.refresh()
            opened = open_content(self.keyring, content)
        except EncryptionError as exc:
            if self.episodes.starts(f"key:{exc}"):
                log.error("cannot serve encrypted Secret data: %s", exc)
            raise KeyUnavailable(str(exc)) from None
        self._keep(key, Rendering(opened, checksum, []))
        return opened

    def _get(self, key: Hashable) -> Rendering | None:
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
        return cached

    def _keep(self, key: Hashable, value: Rendering) -> None:
        if len(value.content) > self.budget:
            return
        self._cache[key] = value
        self._size += len(value.content)
        while self._size > self.budget:
            _, dropped = self._cache.popitem(last=False)
            self._size -= len(dropped.content)

    def __len__(self) -> int:
        return len(self._cache)
