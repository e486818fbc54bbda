"""Versioned SQL migrations, applied in order under a PostgreSQL advisory lock."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from importlib import resources

import psycopg

log = logging.getLogger(__name__)

# Any constant works; two replicas starting together serialise on it.
MIGRATION_LOCK_KEY = 0x5374_6B79_6172_6401
VERSION_TABLE = "stackyard_schema_migrations"
_FILE_PATTERN = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def available_migrations() -> list[Migration]:
    """All migrations shipped in the package, in version order."""
    found = []
    for entry in resources.files("stackyard.store.migrations").iterdir():
        match = _FILE_PATTERN.match(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), match.group(2), entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"duplicate migration versions in package: {versions}")
    return found


def applied_versions(conn: psycopg.Connection) -> set[int]:
    """Versions recorded in the schema version table (empty when it does not exist)."""
    row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (VERSION_TABLE,)).fetchone()
    exists = bool(row and row[0])
    if not exists:
        return set()
    return {row[0] for row in conn.execute(f"SELECT version FROM {VERSION_TABLE}")}


def migrate(url: str) -> list[int]:
    """Apply every pending migration to the database at `url`; returns the versions applied.

    Safe to run twice (the second run applies nothing) and from two processes at
    once (they serialise on an advisory lock; the loser finds nothing to do).
    """
    applied: list[int] = []
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_KEY,))
        try:
            conn.execute(
                f"CREATE TABLE IF NOT EXISTS {VERSION_TABLE} ("
                " version INTEGER PRIMARY KEY, name TEXT NOT NULL,"
                " applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
            )
            done = applied_versions(conn)
            pending = [m for m in available_migrations() if m.version not in done]
            for index, migration in enumerate(pending, start=1):
                log.info(
                    "applying migration %04d_%s (%d of %d)", migration.version, migration.name, index, len(pending)
                )
                with conn.transaction():
                    conn.execute(migration.sql)
                    conn.execute(
                        f"INSERT INTO {VERSION_TABLE} (version, name) VALUES (%s, %s)",
                        (migration.version, migration.name),
                    )
                applied.append(migration.version)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK_KEY,))
    return applied
