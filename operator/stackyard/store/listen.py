"""LISTEN/NOTIFY on a dedicated connection (the pool's connections are shared and short-lived)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

import psycopg
from psycopg import sql

from ..backoff import Backoff

log = logging.getLogger(__name__)

STATE_CHANNEL = "stackyard_state"
AUTH_CHANNEL = "stackyard_auth"
AGENTS_CHANNEL = "stackyard_agents"
EVENTS_CHANNEL = "stackyard_events"


async def notifications(url: str, channels: Sequence[str]) -> AsyncIterator[tuple[str, str]]:
    """Yield (channel, payload) until the connection fails (the caller reconnects).

    A `("", "")` pair is yielded once listening has started, so the caller can
    resynchronise whatever it may have missed while it was not listening.
    """
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        for channel in channels:
            await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
        yield "", ""
        async for notify in conn.notifies():
            yield notify.channel, notify.payload


async def listen_forever(
    url: str,
    channels: Sequence[str],
    on_notify: Callable[[str, str], Awaitable[None]],
    on_state: Callable[[bool], None],
    what: str,
) -> None:
    """Deliver notifications to `on_notify` forever, reconnecting with capped backoff.

    `on_state(True)` is called each time listening (re)starts, so the caller can
    catch up on what it missed; `on_state(False)` when the connection is lost.
    Returns only by cancellation.
    """
    backoff = Backoff(0.5, 10.0)
    while True:
        try:
            async for channel, payload in notifications(url, channels):
                if not channel:
                    backoff.reset()
                    on_state(True)
                    continue
                await on_notify(channel, payload)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("%s lost its database connection (%s); reconnecting soon", what, exc)
        on_state(False)
        await asyncio.sleep(backoff.next_delay())
