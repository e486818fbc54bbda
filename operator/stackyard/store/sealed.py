"""Sealed Secret data: finding the deployment objects sealed under other keys, and re-sealing them (the one
change an immutable deployment object allows, migration 0012)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from .base import StoreBase


@dataclass(frozen=True)
class SealedRow:
    id: uuid.UUID
    sequence_id: int
    yaml_content: str
    key_id: str
    overlays: list[dict[str, Any]] | None


class SealedQueries(StoreBase):
    """Deployment objects whose Secret values are sealed, by key."""

    async def sealed_not_under(self, key_id: str, after_sequence: int, limit: int) -> list[SealedRow]:
        """Up to `limit` sealed deployment objects not sealed with `key_id`, in sequence order after one."""
        async with self.connection() as conn:
            rows = await (await conn.execute(
                "SELECT id, sequence_id, yaml_content, key_id, overlays FROM deployment_objects"
                " WHERE key_id IS NOT NULL AND key_id <> %s AND sequence_id > %s ORDER BY sequence_id LIMIT %s",
                (key_id, after_sequence, limit))).fetchall()
            return [SealedRow(*row) for row in rows]

    async def key_ids_in_use(self) -> dict[str, int]:
        """How many deployment objects each key seals."""
        async with self.connection() as conn:
            rows = await (await conn.execute(
                "SELECT key_id, count(*) FROM deployment_objects WHERE key_id IS NOT NULL GROUP BY key_id")).fetchall()
            return {key: count for key, count in rows}

    async def reseal(self, rows: list[tuple[uuid.UUID, str, str, str, str]]) -> int:
        """Store (id, old key id, new content, new checksum, new key id) for each row, in one transaction, where the
        row is still sealed with the old key; returns how many changed."""
        changed = 0
        async with self.connection() as conn, conn.transaction():
            await conn.execute("SELECT set_config('stackyard.reseal', 'on', true)")
            for row_id, old_key, content, checksum, new_key in rows:
                cur = await conn.execute(
                    "UPDATE deployment_objects SET yaml_content = %s, yaml_checksum = %s, key_id = %s"
                    " WHERE id = %s AND key_id = %s", (content, checksum, new_key, row_id, old_key))
                changed += cur.rowcount
        return changed
