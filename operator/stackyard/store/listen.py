"""LISTEN/NOTIFY on a dedicated connection that proves it is alive (docs/architecture.md, "Database deadlines").

A connection can stop delivering without an error (a NAT or load balancer idle
timeout, a partition without a reset): a listener that only waits would wait
forever, and whatever it keeps fresh (the API's cache, the status mirror) would
go stale. So the listener sends itself a notification every `ping_interval` and
must receive it back within `ping_timeout`; `Liveness` records when the last
round trip started, and a missed one counts as a lost connection: the caller is
told (`on_state(False)`), the connection is abandoned and a new one is made.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from ..backoff import Backoff
from .base import CONNECT_TIMEOUT, connection_kwargs, within

log = logging.getLogger(__name__)

STATE_CHANNEL = "stackyard_state"
AUTH_CHANNEL = "stackyard_auth"
AGENTS_CHANNEL = "stackyard_agents"
EVENTS_CHANNEL = "stackyard_events"
PING_CHANNEL = "stackyard_ping"


class SilentConnection(Exception):
    """The listener's own notification did not come back in time."""


@dataclass
class Liveness:
    """When the listener last proved that its connection delivers notifications.

    `proven_at` is the monotonic time at which a round trip that has since come back started: every
    notification committed before it has been delivered. `alive()` holds while that is at most `max_age` old.
    """

    max_age: float = 3.0
    proven_at: float | None = None

    def prove(self, started: float) -> None:
        self.proven_at = started

    def lose(self) -> None:
        self.proven_at = None

    def alive(self, now: float | None = None) -> bool:
        if self.proven_at is None:
            return False
        return (time.monotonic() if now is None else now) - self.proven_at <= self.max_age


@dataclass(frozen=True)
class PingSettings:
    """How often the listener checks its connection, and how long an answer may take."""

    interval: float = 1.0
    timeout: float = 2.0


def _abandon(conn: psycopg.AsyncConnection[Any]) -> None:
    """Close a connection without waiting on it (it may hang); psycopg only sends Terminate and closes."""
    try:
        conn.pgconn.finish()
    except Exception as exc:  # nothing to do about a connection that cannot even be closed
        log.debug("closing an abandoned listener connection failed: %s", exc)


async def _listen(
    url: str, channels: Sequence[str], on_notify: Callable[[str, str], Awaitable[None]],
    on_up: Callable[[], None], liveness: Liveness, ping: PingSettings,
) -> None:
    """One connection's life: LISTEN, then deliver notifications and check the connection until it fails."""
    conn = await within(CONNECT_TIMEOUT + 1, psycopg.AsyncConnection.connect(url, autocommit=True,
                                                                            **connection_kwargs()), "listener connect")
    busy: asyncio.Task[Any] | None = None
    try:
        for channel in [*channels, PING_CHANNEL]:
            await within(ping.timeout, conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel))), "LISTEN")
        liveness.prove(time.monotonic())
        on_up()
        token, sent_at, count = "", 0.0, 0
        next_ping = time.monotonic() + ping.interval
        while True:
            wait = (sent_at + ping.timeout if token else next_ping) - time.monotonic()
            async for notify in conn.notifies(timeout=max(0.0, wait)):
                if notify.channel != PING_CHANNEL:
                    await on_notify(notify.channel, notify.payload)
                elif token and notify.payload == token:
                    liveness.prove(sent_at)
                    token = ""
            now = time.monotonic()
            if token and now >= sent_at + ping.timeout:
                raise SilentConnection(f"no answer to the listener's own notification within {ping.timeout:g} s")
            if not token and now >= next_ping:
                count += 1
                token, sent_at, next_ping = f"{conn.info.backend_pid}:{count}", now, now + ping.interval
                busy = asyncio.ensure_future(conn.execute("SELECT pg_notify(%s, %s)", (PING_CHANNEL, token)))
                await within(ping.timeout, asyncio.shield(busy), "the listener's ping")
                busy = None
    finally:
        if busy is not None and not busy.done():
            # psycopg is still waiting on the statement: cancel it; the connection is closed once it gives up.
            busy.cancel()
            busy.add_done_callback(lambda _: _abandon(conn))
        else:
            _abandon(conn)


async def listen_forever(
    url: str,
    channels: Sequence[str],
    on_notify: Callable[[str, str], Awaitable[None]],
    on_state: Callable[[bool], None],
    what: str,
    liveness: Liveness | None = None,
    ping: PingSettings | None = None,
) -> None:
    """Deliver notifications to `on_notify` forever, reconnecting with capped backoff.

    `on_state(True)` is called each time listening (re)starts, so the caller can
    catch up on what it missed; `on_state(False)` when the connection is lost or
    stops answering. Returns only by cancellation.
    """
    liveness = liveness or Liveness()
    ping = ping or PingSettings()
    backoff = Backoff(0.5, 10.0)
    reported = ""

    def up() -> None:
        nonlocal reported
        backoff.reset()
        if reported:
            log.info("%s is listening again", what)
        reported = ""
        on_state(True)

    while True:
        try:
            await _listen(url, channels, on_notify, up, liveness, ping)
        except asyncio.CancelledError:
            liveness.lose()
            raise
        except Exception as exc:
            cause = f"{type(exc).__name__}: {exc}".strip()
            if cause != reported:  # once per kind of failure, not once per retry
                log.warning("%s lost its database connection (%s); reconnecting", what, cause)
                reported = cause
        liveness.lose()
        on_state(False)
        await asyncio.sleep(backoff.next_delay())
