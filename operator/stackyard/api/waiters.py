"""Wakes long-polling agents when their desired state may have changed (LISTEN/NOTIFY)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import defaultdict
from collections.abc import Iterator

from ..store import Store
from ..store.listen import STATE_CHANNEL, listen_forever

log = logging.getLogger(__name__)

AgentKey = tuple[str, str]


class StateWaiters:
    """One listener per API process; each waiting request holds an asyncio.Event keyed by (agent, cluster)."""

    def __init__(self, store: Store, url: str):
        self.store = store
        self.url = url
        self._waiting: dict[AgentKey, set[asyncio.Event]] = defaultdict(set)
        self.listening = False

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

    def wake(self, keys: list[AgentKey] | None = None) -> None:
        """Wake the waiters of `keys`, or everyone (after a reconnect, when notifications may have been missed)."""
        for key in list(self._waiting) if keys is None else keys:
            for event in self._waiting.get(key, ()):
                event.set()

    async def run(self) -> None:
        """Listen forever, reconnecting with backoff; never raises except on cancellation."""
        await listen_forever(self.url, [STATE_CHANNEL], self._on_notify, self._on_state, "state listener")

    def _on_state(self, listening: bool) -> None:
        self.listening = listening
        if listening:
            self.wake()  # anything may have changed while not listening

    async def _on_notify(self, _channel: str, payload: str) -> None:
        try:
            stack_id = uuid.UUID(payload)
        except ValueError:
            return
        if self._waiting:
            self.wake(await self.store.targets_of_stack(stack_id))
