"""Where the database is: `STACKYARD_DATABASE_URL`, or an embedded PostgreSQL under a data dir."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

import psycopg

from .embedded import EmbeddedPostgres

log = logging.getLogger(__name__)

EMBEDDED_DATABASE = "stackyard"


def ensure_database(server_url: str, name: str) -> None:
    """Create database `name` on the server unless it exists."""
    with psycopg.connect(server_url, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if not exists:
            conn.execute(psycopg.sql.SQL("CREATE DATABASE {}").format(psycopg.sql.Identifier(name)))


@contextlib.contextmanager
def database_url(url: str | None, data_dir: Path | str) -> Iterator[str]:
    """Yield the URL to use: `url` when given, else an embedded server's.

    The process that starts the embedded server owns it and stops it on exit.
    A server whose owner died without stopping it (kill -9) is adopted: this
    process becomes its owner and stops it on exit. A server whose owner is
    alive is left alone.
    """
    if url:
        yield url
        return
    server = EmbeddedPostgres(data_dir)
    owns = not server.is_running()
    if server.orphaned():
        log.warning("adopting the embedded PostgreSQL in %s: the process that started it is gone", server.pgdata)
        server.adopt()
        owns = True
    server.start()
    ensure_database(server.url(), EMBEDDED_DATABASE)
    embedded_url = server.url(EMBEDDED_DATABASE)
    log.info("using embedded PostgreSQL at %s (data in %s)", embedded_url, server.pgdata)
    try:
        yield embedded_url
    finally:
        if owns:
            server.stop()
            log.info("stopped embedded PostgreSQL (data kept in %s)", server.pgdata)


def running_embedded_url(data_dir: Path | str) -> str | None:
    """The URL of the embedded server on `data_dir` if it is running now."""
    server = EmbeddedPostgres(data_dir)
    info = server.running_info()
    if info is None:
        return None
    server.port = info.port
    return server.url(EMBEDDED_DATABASE)
