"""Long-running loops that survive any error (docs/architecture.md, "Loops that do not die").

A loop of the operator, the agent or the sidecar (a heartbeat, a resync, a
retention pass, a flush) must never end because one pass raised something
unexpected: `forever` logs the error (with its traceback the first time a kind
of error is seen, then nothing more until another kind appears or the loop
works again), counts it, waits with a capped backoff and goes on.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from .backoff import Backoff

Step = Callable[[], Awaitable[float | None]]


async def forever(name: str, step: Step, interval: float, log: logging.Logger,
                  on_error: Callable[[], None] | None = None, backoff: Backoff | None = None) -> None:
    """Call `step` until cancelled; it returns the seconds to wait before the next call (None: `interval`).

    An exception other than cancellation is counted (`on_error`), logged once per kind of error, and followed
    by a backed-off wait (`backoff`, by default 1 s doubling up to the larger of `interval` and 60 s).
    """
    backoff = backoff or Backoff(1.0, max(interval, 60.0))
    failing: str | None = None
    while True:
        try:
            delay = await step()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if on_error is not None:
                on_error()
            delay = backoff.next_delay()
            kind = f"{type(exc).__name__}: {exc}"[:500]
            if kind != failing:
                log.error("%s failed unexpectedly (%s); it goes on in %.1fs", name, kind, delay,
                          exc_info=failing is None)
                failing = kind
        else:
            if failing is not None:
                log.info("%s works again", name)
                failing = None
            backoff.reset()
        await asyncio.sleep(interval if delay is None else delay)
