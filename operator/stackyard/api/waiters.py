"""Wakes long-polling agents when their desired state may have changed, and keeps the API cache true
(LISTEN/NOTIFY)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator

from ..store import Store
from ..store.listen import AUTH_CHANNEL, STATE_CHANNEL, Liveness, PingSettings, listen_forever
from .cache import ApiCache

log = logging.getLogger(__name__)

AgentKey = tuple[str, str]


class StateWaiters:
    """One listener per API process; each waiting request holds an asyncio.Event keyed by (agent, cluster)."""

    def __init__(self, store: Store, url: str, ping: PingSettings | None = None):
        self.store = store
        self.url = url
        self.ping = ping or PingSettings()
        self._waiting: dict[AgentKey, set[asyncio.Event]] = defaultdict(set)
        self.listening = False
        self.closing = False  # the process is shutting down: long-polls answer at once
        self.cache = ApiCache(Liveness(max_age=self.ping.interval + self.ping.timeout))
        # Reads of woken long-polls at once: the pool's size, less two for heartbeats and events.
        self._turns = asyncio.Semaphore(max(1, store.pool.max_size - 2))

    @contextlib.contextmanager
    def subscribe(self, key: AgentKey) -> Iterator[asyncio.Event]:
        """An event set whenever `key`'s state may have changed, for the duration of the block.

        Subscribe before reading the state, so a change in between is not missed.
        """
        event = asyncio.Event()
        self._waiting[key].add(event)
        try:
            yield event
        finally:
            waiters = self._waiting.get(key)
            if waiters is not None:
                waiters.discard(event)
                if not waiters:
                    del self._waiting[key]

    @contextlib.asynccontextmanager
    async def database_turn(self) -> AsyncIterator[None]:
        """A turn at the database for a target-state read.

        While the database answers (the listener is connected), reads wait here for a free connection instead
        of timing out in the pool and answering 503 when a thousand agents wake for one change. During an
        outage they go straight to the pool, which answers 503 within its short wait.
        """
        if not self.listening:
            yield
            return
        async with self._turns:
            yield

    def waiting(self) -> int:
        """How many long-polls are subscribed now."""
        return sum(len(events) for events in self._waiting.values())

    def close(self) -> None:
        """Answer every waiting long-poll now and every new one at once (SIGTERM)."""
        self.closing = True
        self.wake()

    def wake(self, keys: list[AgentKey] | None = None) -> None:
        """Wake the waiters of `keys`, or everyone (after a reconnect, when notifications may have been missed)."""
        for key in list(self._waiting) if keys is None else keys:
            for event in self._waiting.get(key, ()):
                event.set()

    async def run(self) -> None:
        """Listen forever, reconnecting with backoff; never raises except on cancellation."""
        await listen_forever(self.url, [STATE_CHANNEL, AUTH_CHANNEL], self._on_notify, self._on_state,
                             "state listener", self.cache.liveness, self.ping)

    def _on_state(self, listening: bool) -> None:
        self.listening = listening
        self.cache.drop_all()
        # Up: anything may have changed while not listening. Down: nothing will wake them now, so each long-poll
        # reads its state once and then re-reads it on a timer until the listener is back.
        self.wake()


    async def _on_notify(self, channel: str, payload: str) -> None:
        if channel == AUTH_CHANNEL:
            try:
                data = json.loads(payload)
            except ValueError:
                self.cache.drop_all()  # unreadable: drop everything
                return
            self.cache.drop_identity(data.get("pak_hash"), str(data.get("agent_id")))
            return
        if not self._waiting and not self.cache.etags:
            return  # nobody to wake, nothing to drop
        keys = await self._keys(payload)
        if keys is None:
            self.cache.drop_all()  # unreadable: drop everything, wake everyone
            self.wake()
            return
        self.cache.drop_etags(keys)
        self.wake(keys)

    async def _keys(self, payload: str) -> list[AgentKey] | None:
        """Whose state a notification touches: a target row names its agent; a new version, every target."""
        if payload.startswith("{"):
            try:
                data = json.loads(payload)
                return [(str(data["agent"]), str(data["cluster"]))]
            except (ValueError, KeyError):
                return None
        try:
            stack_id = uuid.UUID(payload)
        except ValueError:
            return None
        return await self.store.targets_of_stack(stack_id)
