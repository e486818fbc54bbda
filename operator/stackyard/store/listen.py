"""LISTEN/NOTIFY on a dedicated connection (the pool's connections are shared and short-lived)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence

import psycopg
from psycopg import sql

log = logging.getLogger(__name__)

STATE_CHANNEL = "stackyard_state"
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
