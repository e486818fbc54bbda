"""Stacks and their versions (deployment objects), and the staged rollout that releases versions to targets."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import class_row
from psycopg.types.json import Jsonb

from .base import Conflict, NotFound, StoreBase, columns, replace_metadata
from .targets import TARGET_ROWS_SQL, TargetRow

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


def sha256_hex(text: str) -> str:
    """Hex sha256 of UTF-8 text, as stored in `yaml_checksum`."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class DeploymentObject:
    id: uuid.UUID
    stack_id: uuid.UUID
    sequence_id: int
    yaml_checksum: str
    submitted_at: datetime
    is_deletion_marker: bool
    yaml_content: str
    key_id: str | None = None  # the key its Secret values are sealed with (None: no Secret data)
    overlays: list[dict[str, Any]] | None = None  # per-agent patches, validated (None: every agent gets the YAML)


@dataclass(frozen=True)
class Content:
    """What a new deployment object stores: its YAML (Secret values sealed), its checksum (a keyed HMAC when it
    holds Secret data: the caller computes it, holding the key), the id of the sealing key, and its overlays
    (which the checksum covers)."""

    yaml: str
    checksum: str
    key_id: str | None = None
    overlays: list[dict[str, Any]] | None = None

    @classmethod
    def plain(cls, yaml_text: str, overlays: list[dict[str, Any]] | None = None) -> "Content":
        """Content without Secret data: its checksum is the sha256 of the YAML (and of its overlays)."""
        return cls(yaml_text, sha256_hex(checksummed_text(yaml_text, overlays)), None, overlays)


def checksummed_text(yaml_text: str, overlays: list[dict[str, Any]] | None) -> str:
    """What a version's checksum covers: its YAML, and its overlays as canonical JSON when it has any."""
    if not overlays:
        return yaml_text
    return yaml_text + "\n# overlays\n" + json.dumps(overlays, sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True)
class EmitResult:
    deployment_object: DeploymentObject
    created: bool


LATEST_SQL = (
    f"SELECT {columns(DeploymentObject)} FROM deployment_objects"
    " WHERE stack_id = %s AND deleted_at IS NULL ORDER BY sequence_id DESC LIMIT 1"
)

RolloutDecision = Callable[[Mapping[str, Any] | None, DeploymentObject | None, list[TargetRow]], list[tuple[str, str]]]


class StackQueries(StoreBase):
    """Stacks, their labels and annotations, their deployment objects and their rollout."""

    async def upsert_stack(
        self,
        stack_id: uuid.UUID,
        name: str,
        description: str | None,
        labels: Iterable[str] = (),
        annotations: Mapping[str, str] | None = None,
    ) -> None:
        """Create or update a live stack with exactly these labels and annotations.

        A different live stack holding the same name is stale (its custom resource
        is gone: Kubernetes names are unique), so it is soft-deleted first, which
        sends its deletion marker to the agents.
        """
        async with self.connection() as conn, conn.transaction():
            await _upsert_stack(conn, stack_id, name, description, labels, annotations or {})

    async def save_stack(
        self,
        stack_id: uuid.UUID,
        name: str,
        description: str | None,
        labels: Iterable[str],
        annotations: Mapping[str, str],
        yaml_content: str | Content,
        rollout: Mapping[str, Any] | None = None,
    ) -> EmitResult:
        """`upsert_stack` and `emit_deployment_object` in one transaction (one reconcile, one round of locks).

        With a `rollout` policy, targets that follow the latest version are pinned to the current one first,
        so a new version reaches them only when the operator releases it (`advance_rollout`). Without one,
        every target follows the latest version again.
        """
        async with self.connection() as conn, conn.transaction():
            await _upsert_stack(conn, stack_id, name, description, labels, annotations)
            await _set_rollout(conn, stack_id, rollout)
            return await _emit(conn, stack_id, yaml_content)

    async def stack_rollout(self, stack_id: uuid.UUID) -> Mapping[str, Any] | None:
        """The stack's stored rollout policy (None: no staged rollout)."""
        async with self.connection() as conn:
            row = await (await conn.execute("SELECT rollout FROM stacks WHERE id = %s", (stack_id,))).fetchone()
            return row[0] if row else None

    async def advance_rollout(self, stack_id: uuid.UUID, decide: RolloutDecision) -> list[tuple[str, str]]:
        """Release the latest version to the targets `decide` picks from the policy, the latest version and the
        target rows, all read and written in one transaction with the stack row locked (no double release)."""
        async with self.connection() as conn, conn.transaction():
            row = await (await conn.execute(
                "SELECT rollout FROM stacks WHERE id = %s AND deleted_at IS NULL FOR UPDATE", (stack_id,))).fetchone()
            if row is None or row[0] is None:
                return []
            latest = await (await conn.cursor(row_factory=class_row(DeploymentObject)).execute(
                LATEST_SQL, (stack_id,))).fetchone()
            rows = await (await conn.cursor(row_factory=class_row(TargetRow)).execute(
                TARGET_ROWS_SQL, (stack_id, None, None, None, None))).fetchall()
            pairs = decide(row[0], latest, rows)
            if pairs and latest is not None:
                await conn.execute(
                    "UPDATE agent_targets SET released_sequence = %s WHERE stack_id = %s"
                    " AND (agent_name, cluster_name) IN (SELECT * FROM unnest(%s::text[], %s::text[]))"
                    " AND released_sequence < %s",
                    (latest.sequence_id, stack_id, [a for a, _ in pairs], [c for _, c in pairs], latest.sequence_id))
            return pairs

    async def emit_deployment_object(self, stack_id: uuid.UUID, yaml_content: str | Content) -> EmitResult:
        """Insert a deployment object unless the stack's latest one has the same checksum.

        The stack row is locked for the check, so concurrent callers with the
        same content produce exactly one row; the others get the existing one.
        """
        async with self.connection() as conn, conn.transaction():
            return await _emit(conn, stack_id, yaml_content)

    async def latest_deployment_object(self, stack_id: uuid.UUID) -> DeploymentObject | None:
        """The stack's newest live deployment object (its deletion marker once deleted)."""
        async with self.connection() as conn:
            cur = conn.cursor(row_factory=class_row(DeploymentObject))
            return await (await cur.execute(LATEST_SQL, (stack_id,))).fetchone()

    async def soft_delete_stack(self, stack_id: uuid.UUID) -> bool:
        """Soft-delete a stack (the database emits its deletion marker); False if already gone."""
        async with self.connection() as conn:
            cur = await conn.execute(
                "UPDATE stacks SET deleted_at = now() WHERE id = %s AND deleted_at IS NULL", (stack_id,)
            )
            return cur.rowcount == 1

    async def live_stack_id(self, name: str) -> uuid.UUID | None:
        """The id of the live stack called `name`, if any."""
        async with self.connection() as conn:
            row = await (
                await conn.execute("SELECT id FROM stacks WHERE name = %s AND deleted_at IS NULL", (name,))
            ).fetchone()
            return row[0] if row else None


async def _upsert_stack(
    conn: psycopg.AsyncConnection[Any],
    stack_id: uuid.UUID,
    name: str,
    description: str | None,
    labels: Iterable[str],
    annotations: Mapping[str, str],
) -> None:
    row = await (await conn.execute("SELECT deleted_at FROM stacks WHERE id = %s FOR UPDATE", (stack_id,))).fetchone()
    if row is not None and row[0] is not None:
        raise Conflict(f"stack {stack_id} was deleted and cannot be updated")
    await conn.execute(
        "UPDATE stacks SET deleted_at = now() WHERE name = %s AND id <> %s AND deleted_at IS NULL", (name, stack_id)
    )
    await conn.execute(
        "INSERT INTO stacks (id, name, description) VALUES (%s, %s, %s)"
        " ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name, description = EXCLUDED.description"
        " WHERE (stacks.name, stacks.description) IS DISTINCT FROM (EXCLUDED.name, EXCLUDED.description)",
        (stack_id, name, description),
    )
    await replace_metadata(conn, stack_id, labels, annotations)


async def _set_rollout(conn: psycopg.AsyncConnection[Any], stack_id: uuid.UUID,
                       rollout: Mapping[str, Any] | None) -> None:
    await conn.execute("UPDATE stacks SET rollout = %s WHERE id = %s",
                       (Jsonb(dict(rollout)) if rollout is not None else None, stack_id))
    if rollout is None:
        await conn.execute("UPDATE agent_targets SET released_sequence = NULL"
                           " WHERE stack_id = %s AND released_sequence IS NOT NULL", (stack_id,))
    else:
        await conn.execute(
            "UPDATE agent_targets SET released_sequence = (SELECT coalesce(max(sequence_id), 0) FROM deployment_objects"
            "  WHERE stack_id = %s AND deleted_at IS NULL AND NOT is_deletion_marker)"
            " WHERE stack_id = %s AND released_sequence IS NULL", (stack_id, stack_id))


async def _emit(conn: psycopg.AsyncConnection[Any], stack_id: uuid.UUID, content: str | Content) -> EmitResult:
    """Insert a deployment object unless the latest has the same checksum (the stack row is locked)."""
    content = Content.plain(content) if isinstance(content, str) else content
    checksum = content.checksum
    locked = await (
        await conn.execute("SELECT 1 FROM stacks WHERE id = %s AND deleted_at IS NULL FOR UPDATE", (stack_id,))
    ).fetchone()
    if locked is None:
        raise NotFound(f"no live stack {stack_id}")
    cur = conn.cursor(row_factory=class_row(DeploymentObject))
    latest = await (await cur.execute(LATEST_SQL, (stack_id,))).fetchone()
    if latest is not None and latest.yaml_checksum == checksum:
        return EmitResult(latest, created=False)
    created: DeploymentObject | None = await (
        await cur.execute(
            "INSERT INTO deployment_objects (stack_id, yaml_content, yaml_checksum, key_id, overlays)"
            f" VALUES (%s, %s, %s, %s, %s) RETURNING {columns(DeploymentObject)}",
            (stack_id, content.yaml, checksum, content.key_id,
             Jsonb(content.overlays) if content.overlays is not None else None),
        )
    ).fetchone()
    assert created is not None  # INSERT ... RETURNING always returns the row
    return EmitResult(created, created=True)
