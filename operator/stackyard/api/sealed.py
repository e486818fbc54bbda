"""Opening sealed Secret data for target-state answers (docs/architecture.md, "Secrets").

Opening means parsing and writing the YAML again (about 1.5 ms for a stack of six objects), so each process
keeps the opened text of the deployment objects it served, least recently used first out, within a budget
of characters. A row's opened text never changes: a re-seal (`stackyard db rotate-key`) changes its
checksum, which is part of the key, so no entry outlives what it was read from. The process holds the key
that opens them anyway; the cache adds no new place a value can be read from outside the process.
"""

from __future__ import annotations

import logging
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field

from ..encryption import EncryptionError, Keyring, is_sealed, open_content
from ..logs import Episodes

log = logging.getLogger(__name__)


class KeyUnavailable(Exception):
    """Sealed content this process cannot open; the message names the key, never a value."""


@dataclass
class Opener:
    """The API's keyring (None: no key file) and its cache of opened contents."""

    keyring: Keyring | None
    budget: int = 32 * 1024 * 1024  # characters of opened YAML kept
    episodes: Episodes = field(default_factory=Episodes)
    _cache: OrderedDict[tuple[uuid.UUID, str], str] = field(default_factory=OrderedDict)
    _size: int = 0

    def open(self, deployment_object_id: uuid.UUID, checksum: str, content: str) -> str:
        """`content` with its sealed values opened (as it is when nothing is sealed), or KeyUnavailable."""
        if not is_sealed(content):
            return content
        key = (deployment_object_id, checksum)
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            return cached
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
        self._keep(key, opened)
        return opened

    def _keep(self, key: tuple[uuid.UUID, str], opened: str) -> None:
        if len(opened) > self.budget:
            return
        self._cache[key] = opened
        self._size += len(opened)
        while self._size > self.budget:
            _, dropped = self._cache.popitem(last=False)
            self._size -= len(dropped)

    def __len__(self) -> int:
        return len(self._cache)
