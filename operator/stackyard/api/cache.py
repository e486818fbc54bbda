"""What a 304 needs, kept per API process so it touches no database: who a key belongs to, and each agent's ETag.

Both are filled from the database on a miss and dropped through LISTEN/NOTIFY
(`StateWaiters`): a key rotated or an agent deleted or renamed
(`stackyard_auth`, migration 0009) drops its identity; a change to a stack's
targets or versions (`stackyard_state`) drops the ETags of the agents that
target it. Nothing is served from the cache unless the listener has proved its
connection alive within the last few seconds (`store.listen.Liveness`: a
connection can go silent without an error, and notifications would be missed),
and everything is dropped when it reconnects.

A key hash that matched no agent is remembered as unknown for a short while
(`unknown_seconds`), so a stream of random keys costs no database lookups;
any key or agent change forgets them all.

A read that raced with an invalidation is not cached: every key carries a
generation, bumped by each invalidation, and a value read under an older
generation is discarded.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from ..store import Agent
from ..store.listen import Liveness

AgentKey = tuple[str, str]


@dataclass
class ApiCache:
    """Identities by key hash and ETags by (agent, cluster), served only while the listener is proven alive."""

    liveness: Liveness = field(default_factory=Liveness)
    unknown_seconds: float = 30.0
    max_unknown: int = 100_000
    unknown: dict[str, float] = field(default_factory=dict)  # key hash -> until (monotonic)
    identities: dict[str, Agent] = field(default_factory=dict)
    etags: dict[AgentKey, str] = field(default_factory=dict)
    _epoch: int = 0  # bumped when everything is dropped
    _etag_generation: dict[AgentKey, int] = field(default_factory=lambda: defaultdict(int))

    @property
    def enabled(self) -> bool:
        return self.liveness.alive()

    # identities -------------------------------------------------------------------------

    def identity(self, secret_hash: str) -> Agent | None:
        return self.identities.get(secret_hash) if self.enabled else None

    def epoch(self) -> int:
        return self._epoch

    def keep_identity(self, secret_hash: str, agent: Agent, epoch: int) -> None:
        """Remember a verified identity read under `epoch` (dropped if anything was invalidated since)."""
        if self.enabled and epoch == self._epoch:
            self.identities[secret_hash] = agent

    def drop_identity(self, secret_hash: str | None, agent_id: str | None = None) -> None:
        """A key rotated, an agent deleted or changed: its cached identity goes (and, to be safe, any read
        in flight, and every key remembered as unknown)."""
        self._epoch += 1
        self.unknown.clear()
        for cached_hash, agent in list(self.identities.items()):
            if cached_hash == secret_hash or (agent_id is not None and str(agent.id) == agent_id):
                del self.identities[cached_hash]

    def known_unknown(self, secret_hash: str) -> bool:
        """True when this key hash matched no agent a short while ago."""
        until = self.unknown.get(secret_hash)
        if until is None:
            return False
        if until < time.monotonic():
            del self.unknown[secret_hash]
            return False
        return True

    def remember_unknown(self, secret_hash: str) -> None:
        if len(self.unknown) >= self.max_unknown:
            self.unknown.clear()
        self.unknown[secret_hash] = time.monotonic() + self.unknown_seconds

    # ETags -------------------------------------------------------------------------------

    def etag(self, key: AgentKey) -> str | None:
        return self.etags.get(key) if self.enabled else None

    def etag_generation(self, key: AgentKey) -> tuple[int, int]:
        return self._epoch, self._etag_generation[key]

    def keep_etag(self, key: AgentKey, etag: str, generation: tuple[int, int]) -> None:
        if self.enabled and generation == (self._epoch, self._etag_generation[key]):
            self.etags[key] = etag

    def drop_etags(self, keys: Iterable[AgentKey]) -> None:
        for key in keys:
            self._etag_generation[key] += 1
            self.etags.pop(key, None)

    # the listener ---------------------------------------------------------------------------

    def drop_all(self) -> None:
        """The listener (re)connected or lost its connection: notifications may have been missed."""
        self._epoch += 1
        self.identities.clear()
        self.etags.clear()
        self.unknown.clear()
