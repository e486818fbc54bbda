"""Retention: what the operator deletes on a schedule so that no table grows without bound."""

from __future__ import annotations

from datetime import timedelta

from .base import StoreBase


PURGE_BATCH = 10_000


class RetentionQueries(StoreBase):
    """Hard deletes of soft-deleted rows and of old agent events."""

    async def purge_soft_deleted(self, older_than: timedelta) -> dict[str, int]:
        """Hard-delete soft-deleted rows older than `older_than`; counts per table."""
        async with self.connection() as conn:
            rows = await (
                await conn.execute("SELECT kind, purged FROM stackyard_purge_soft_deleted(%s)", (older_than,))
            ).fetchall()
            return {kind: purged for kind, purged in rows}

    async def purge_agent_events(self, older_than: timedelta, batch: int = PURGE_BATCH) -> int:
        """Delete one batch of live agent events older than `older_than` (never the newest of each kind that
        status shows); returns how many. Call again while it returns `batch`."""
        async with self.connection() as conn:
            row = await (
                await conn.execute("SELECT stackyard_purge_agent_events(%s, %s)", (older_than, batch))
            ).fetchone()
            return int(row[0]) if row else 0
