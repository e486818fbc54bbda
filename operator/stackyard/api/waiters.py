"""Wakes long-polling agents when their desired state may have changed (LISTEN/NOTIFY)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import defaultdict
from collections.abc import Iterator

from ..store import Store
from ..store.listen import STATE_CHANNEL, notifications

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
        delay = 0.5
        while True:
            try:
                async for channel, payload in notifications(self.url, [STATE_CHANNEL]):
                    if not channel:
                        self.listening = True
                        delay = 0.5
                        self.wake()
                        continue
                    try:
                        stack_id = uuid.UUID(payload)
                    except ValueError:
                        continue
                    if self._waiting:
                        self.wake(await self.store.targets_of_stack(stack_id))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("state listener lost its connection (%s); reconnecting in %.1fs", exc, delay)
            self.listening = False
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)
