"""One capped, jittered exponential backoff for every retry loop in stackyard.

Jitter (±20% by default) keeps many agents or replicas that failed together
from retrying in lockstep against a recovering server.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass


@dataclass
class Backoff:
    """Delays of base, 2·base, 4·base, ... capped at `maximum`, each jittered; `reset()` after a success."""

    base: float = 0.5
    maximum: float = 30.0
    jitter: float = 0.2
    attempts: int = 0
    next_at: float = 0.0

    def next_delay(self) -> float:
        """The delay before the next attempt (and remember when that is due)."""
        delay = min(self.base * 2 ** min(self.attempts, 32), self.maximum)
        delay *= 1 + random.uniform(-self.jitter, self.jitter)
        self.attempts += 1
        self.next_at = time.monotonic() + delay
        return delay

    def reset(self) -> None:
        self.attempts, self.next_at = 0, 0.0

    def waiting(self) -> bool:
        """True while a retry is not due yet."""
        return self.attempts > 0 and time.monotonic() < self.next_at
