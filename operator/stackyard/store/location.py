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

    The embedded server is started when needed and stopped on exit only if this
    call started it, so a server someone else runs on the same data dir is left alone.
    """
    if url:
        yield url
        return
    server = EmbeddedPostgres(data_dir)
    started_here = not server.is_running()
    server.start()
    ensure_database(server.url(), EMBEDDED_DATABASE)
    embedded_url = server.url(EMBEDDED_DATABASE)
    log.info("using embedded PostgreSQL at %s (data in %s)", embedded_url, server.pgdata)
    try:
        yield embedded_url
    finally:
        if started_here:
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
