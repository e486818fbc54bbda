"""Limits per client of the agent API (README, "Agent API": limits): every client gets one, none can starve others.

- concurrent long-polls per agent key;
- event and heartbeat rates per agent (token buckets);
- failed authentications per source address (a token bucket; `cache.ApiCache` also remembers a key hash
  that matched nothing for a while, so random keys cost no database lookup);
- open connections per process (below the open-file limit, so a flood is refused, not an `accept()` storm).

Each refusal is a 429 with `Retry-After` (the connection limit closes the connection: there is no request
yet to answer).
"""

from __future__ import annotations

import contextlib
import math
import resource
import time
from collections.abc import Hashable, Iterator
from dataclasses import dataclass

RESERVED_FDS = 256  # kept free for the pool, the listener, logs and the metrics server


def default_max_connections() -> int:
    """The open-file limit of this process less what it needs besides client connections."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 100_000
    return max(64, soft - RESERVED_FDS)


@dataclass(frozen=True)
class LimitSettings:
    """The limits and their defaults (each is a `stackyard api`/`run` option)."""

    long_polls_per_agent: int = 4
    events_per_second: float = 10.0
    events_burst: int = 1000
    heartbeats_per_second: float = 1.0
    heartbeats_burst: int = 5
    auth_failures_per_second: float = 2.0
    auth_failures_burst: int = 20
    max_connections: int = 0  # 0: the open-file limit less RESERVED_FDS


class Refused(Exception):
    """A limit refused the request: `limit` names which (a metric label), `retry_after` is in whole seconds."""

    def __init__(self, limit: str, what: str, retry_after: float):
        super().__init__(what)
        self.limit = limit
        self.what = what
        self.retry_after = max(1, math.ceil(retry_after))


class TokenBuckets:
    """One token bucket per key: `rate` tokens a second, at most `burst` saved up.

    Memory is bounded: when more than `max_keys` keys are held, the ones whose bucket has refilled (they
    would start full anyway) are forgotten.
    """

    def __init__(self, name: str, rate: float, burst: int, max_keys: int = 100_000):
        self.name = name
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        self._buckets: dict[Hashable, tuple[float, float]] = {}

    def _tokens(self, key: Hashable, now: float) -> float:
        tokens, at = self._buckets.get(key, (float(self.burst), now))
        return min(float(self.burst), tokens + (now - at) * self.rate)

    def take(self, key: Hashable, what: str, count: int = 1) -> None:
        """Take `count` tokens, or raise Refused saying when they will be there."""
        now = time.monotonic()
        tokens = self._tokens(key, now)
        count = min(count, self.burst)
        if tokens < count:
            raise Refused(self.name, what, (count - tokens) / self.rate)
        self._buckets[key] = (tokens - count, now)
        if len(self._buckets) > self.max_keys:
            self._forget_full(now)

    def check(self, key: Hashable, what: str) -> None:
        """Raise Refused when the bucket is empty, without taking anything."""
        tokens = self._tokens(key, time.monotonic())
        if tokens < 1:
            raise Refused(self.name, what, (1 - tokens) / self.rate)

    def _forget_full(self, now: float) -> None:
        for key in [k for k in self._buckets if self._tokens(k, now) >= self.burst]:
            del self._buckets[key]
        if len(self._buckets) > self.max_keys:
            self._buckets.clear()


class Limiter:
    """The limits of one API process."""

    def __init__(self, settings: LimitSettings):
        self.settings = settings
        self.events = TokenBuckets("events", settings.events_per_second, settings.events_burst)
        self.heartbeats = TokenBuckets("heartbeats", settings.heartbeats_per_second, settings.heartbeats_burst)
        self.auth_failures = TokenBuckets("auth_failures", settings.auth_failures_per_second,
                                          settings.auth_failures_burst)
        self._long_polls: dict[Hashable, int] = {}

    @contextlib.contextmanager
    def long_poll(self, agent: Hashable) -> Iterator[None]:
        """Hold one of the agent's long-poll slots for the duration of the block, or raise Refused."""
        held = self._long_polls.get(agent, 0)
        if held >= self.settings.long_polls_per_agent:
            raise Refused("long_polls", f"this agent already has {held} long-polls waiting; at most"
                          f" {self.settings.long_polls_per_agent}", 1)
        self._long_polls[agent] = held + 1
        try:
            yield
        finally:
            left = self._long_polls[agent] - 1
            if left:
                self._long_polls[agent] = left
            else:
                del self._long_polls[agent]

    def long_polls(self) -> int:
        return sum(self._long_polls.values())

    def max_connections(self) -> int:
        return self.settings.max_connections or default_max_connections()
