"""Agents: registration, grants, labels, keys (only a hash of each key's secret is stored)."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import class_row
from psycopg.types.json import Jsonb

from .base import Conflict, Immutable, NotFound, StoreBase, columns, replace_metadata


@dataclass(frozen=True)
class Agent:
    id: uuid.UUID
    name: str
    cluster_name: str
    status: str
    last_heartbeat: datetime | None
    pak_hash: str | None
    created_at: datetime
    pak_key_id: str | None = None
    held_stacks: int | None = None  # how many stacks the agent said it holds in its cluster, at its last heartbeat
    deleting_since: datetime | None = None  # the Agent resource is being deleted: its desired state is empty


AGENT_COLUMNS = columns(Agent)


class AgentQueries(StoreBase):
    """The agents table and an agent's labels and annotations."""

    async def register_agent(
        self,
        agent_id: uuid.UUID,
        name: str,
        cluster_name: str,
        labels: Iterable[str] = (),
        annotations: Mapping[str, str] | None = None,
        namespace: str | None = None,
        allowed_namespaces: Iterable[str] = (),
        selector_labels: Mapping[str, str] | None = None,
        impersonate: Sequence[Mapping[str, Any]] = (),
        impersonation_required: bool = False,
    ) -> Agent:
        """Create or update a live agent row with these labels, annotations and grants; Immutable on a rename.

        `namespace` is the Agent resource's; `allowed_namespaces` the namespaces it accepts targets from
        besides its own. Targets it no longer permits are removed by the database. `impersonate` maps
        namespaces to service accounts of the agent's cluster ({"namespaces": [...], "serviceAccount": {...}},
        first match wins; `stackyard_apply_as`, migration 0014).
        """
        async with self.connection() as conn, conn.transaction():
            try:
                cur = conn.cursor(row_factory=class_row(Agent))
                agent = await (
                    await cur.execute(
                        "INSERT INTO agents (id, name, cluster_name, namespace, allowed_namespaces, selector_labels,"
                        " impersonate, impersonation_required) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
                        " ON CONFLICT (id) DO UPDATE SET namespace = EXCLUDED.namespace,"
                        " allowed_namespaces = EXCLUDED.allowed_namespaces, selector_labels = EXCLUDED.selector_labels,"
                        " impersonate = EXCLUDED.impersonate,"
                        " impersonation_required = EXCLUDED.impersonation_required"
                        # name and cluster are fixed once the row exists: no row back means a rename was asked
                        " WHERE (agents.name, agents.cluster_name) = (EXCLUDED.name, EXCLUDED.cluster_name)"
                        f" RETURNING {AGENT_COLUMNS}",
                        (agent_id, name, cluster_name, namespace, sorted(set(allowed_namespaces)),
                         Jsonb(dict(selector_labels or {})), Jsonb([dict(rule) for rule in impersonate]),
                         impersonation_required),
                    )
                ).fetchone()
            except psycopg.errors.UniqueViolation as exc:
                raise Conflict(f"another live agent is already called {name!r} in cluster {cluster_name!r}") from exc
            if agent is None:
                raise Immutable(f"agent {agent_id} is registered under another name or cluster; both are immutable")
            await replace_metadata(conn, agent_id, labels, annotations or {})
            return agent

    async def set_agent_pak_hash(self, agent_id: uuid.UUID, pak_hash: str, key_id: str | None = None) -> None:
        """Store the sha256 of a new PAK secret and its key id; the previous key stops working at once."""
        async with self.connection() as conn:
            cur = await conn.execute(
                "UPDATE agents SET pak_hash = %s, pak_key_id = %s WHERE id = %s AND deleted_at IS NULL",
                (pak_hash, key_id, agent_id),
            )
            if cur.rowcount != 1:
                raise NotFound(f"no live agent {agent_id}")

    async def get_agent(self, agent_id: uuid.UUID) -> Agent | None:
        async with self.connection() as conn:
            cur = conn.cursor(row_factory=class_row(Agent))
            return await (
                await cur.execute(f"SELECT {AGENT_COLUMNS} FROM agents WHERE id = %s AND deleted_at IS NULL", (agent_id,))
            ).fetchone()

    async def agent_by_pak_hash(self, pak_hash: str) -> Agent | None:
        """The live agent whose stored PAK hash is `pak_hash`."""
        async with self.connection() as conn:
            cur = conn.cursor(row_factory=class_row(Agent))
            return await (
                await cur.execute(
                    f"SELECT {AGENT_COLUMNS} FROM agents WHERE pak_hash = %s AND deleted_at IS NULL", (pak_hash,)
                )
            ).fetchone()

    async def agent_metadata(self, agent_id: uuid.UUID) -> tuple[list[str], dict[str, str]]:
        """Labels and annotations recorded for an agent."""
        return await self._metadata(agent_id)

    async def _metadata(self, object_id: uuid.UUID) -> tuple[list[str], dict[str, str]]:
        async with self.connection() as conn:
            labels = await (
                await conn.execute("SELECT label FROM labels WHERE external_object_id = %s ORDER BY label", (object_id,))
            ).fetchall()
            annotations = await (
                await conn.execute(
                    "SELECT key, value FROM annotations WHERE external_object_id = %s ORDER BY key", (object_id,)
                )
            ).fetchall()
            return [row[0] for row in labels], {key: value for key, value in annotations}

    async def soft_delete_agent(self, agent_id: uuid.UUID) -> bool:
        """Soft-delete an agent (its events follow); False if already gone."""
        async with self.connection() as conn:
            cur = await conn.execute(
                "UPDATE agents SET deleted_at = now() WHERE id = %s AND deleted_at IS NULL", (agent_id,)
            )
            return cur.rowcount == 1

    async def agent_by_name(self, name: str, cluster_name: str) -> Agent | None:
        """The live agent called `name` in `cluster_name`."""
        async with self.connection() as conn:
            cur = conn.cursor(row_factory=class_row(Agent))
            return await (
                await cur.execute(
                    f"SELECT {AGENT_COLUMNS} FROM agents WHERE name = %s AND cluster_name = %s AND deleted_at IS NULL",
                    (name, cluster_name),
                )
            ).fetchone()

    async def agent_heartbeats(self) -> list[datetime | None]:
        """The last heartbeat of every live agent (None: never heard from)."""
        async with self.connection() as conn:
            rows = await (await conn.execute("SELECT last_heartbeat FROM agents WHERE deleted_at IS NULL")).fetchall()
            return [row[0] for row in rows]

    async def begin_agent_deletion(self, agent_id: uuid.UUID) -> Agent | None:
        """Mark a live agent as being deleted (its desired state becomes empty at once); returns its row."""
        async with self.connection() as conn:
            cur = conn.cursor(row_factory=class_row(Agent))
            return await (
                await cur.execute(
                    "UPDATE agents SET deleting_since = coalesce(deleting_since, now())"
                    f" WHERE id = %s AND deleted_at IS NULL RETURNING {AGENT_COLUMNS}",
                    (agent_id,),
                )
            ).fetchone()

    async def agent_visible_to(self, namespace: str, name: str, cluster_name: str) -> Agent | None:
        """The live agent called `name` in `cluster_name` if a target in `namespace` may bind it; None when it does
        not exist or does not grant that namespace (the two look the same: a tenant learns nothing about agents
        it may not use)."""
        async with self.connection() as conn:
            cur = conn.cursor(row_factory=class_row(Agent))
            return await (
                await cur.execute(
                    f"SELECT {AGENT_COLUMNS} FROM agents a WHERE name = %s AND cluster_name = %s"
                    " AND deleted_at IS NULL AND stackyard_target_permitted(%s, a.name, a.cluster_name)",
                    (name, cluster_name, namespace),
                )
            ).fetchone()
