"""Agent targets: which stacks go to which (agent, cluster), who owns each binding, and the tenancy rule."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import class_row

from .base import NotFound, NotPermitted, StoreBase

OWNER_KEY = "stackyard.dev/owner-uid"


def target_row_id(owner_uid: uuid.UUID, stack_id: uuid.UUID, agent_name: str, cluster_name: str) -> uuid.UUID:
    """The id of the row an AgentTarget resource creates to bind one agent to a stack (derived, not random)."""
    return uuid.uuid5(owner_uid, f"{stack_id}/{agent_name}/{cluster_name}")


@dataclass(frozen=True)
class TargetRow:
    """One target of a stack with the agent's latest event on any version of that stack."""

    stack_id: uuid.UUID
    agent_name: str
    cluster_name: str
    agent_id: uuid.UUID | None
    agent_status: str | None
    last_heartbeat: datetime | None
    event_status: str | None
    event_message: str | None
    event_time: datetime | None
    event_sequence_id: int | None
    target_id: uuid.UUID | None = None
    released_sequence: int | None = None  # None: follows the latest version (no staged rollout)
    health_details: Mapping[str, Any] | None = None  # the agent's latest HEALTH summary on this stack
    health_sequence_id: int | None = None  # the version that summary is about
    drift_time: datetime | None = None  # the agent's latest DRIFT event on this stack
    drift_message: str | None = None
    agent_labels: Mapping[str, str] | None = None  # the Agent's metadata.labels (overlays select by them)
    event_checksum: str | None = None  # the checksum of what the agent received, as its latest event says
    apply_as: Mapping[str, Any] | None = None  # how the agent applies this stack (stackyard_apply_as)



class TargetQueries(StoreBase):
    """Target rows of AgentTarget resources and the status rows read from them."""

    async def set_agent_targets(
        self, owner_uid: uuid.UUID, stack_id: uuid.UUID | None, agents: Sequence[tuple[str, str]],
        namespace: str = "default",
    ) -> None:
        """Make an AgentTarget resource bind exactly these (agent, cluster) pairs to its Stack.

        With `stack_id` None (the Stack does not exist) the owner keeps no row on a live stack.
        Rows of the owner that point at soft-deleted stacks stay (they carry the deletion marker
        to the agent) until the stack is hard-deleted. A pair another AgentTarget already binds
        to the same stack is shared, not duplicated: its row stays the other one's.

        `namespace` is the AgentTarget's: the database refuses (NotPermitted) a binding to an
        agent that lives in another namespace and does not grant this one.
        """
        wanted = sorted(set(agents)) if stack_id else []
        async with self.connection() as conn, conn.transaction():
            await conn.execute(
                "DELETE FROM agent_targets t USING annotations a, stacks s"
                " WHERE a.external_object_id = t.id AND a.key = %s AND a.value = %s"
                " AND s.id = t.stack_id AND s.deleted_at IS NULL"
                " AND NOT (t.stack_id IS NOT DISTINCT FROM %s AND (t.agent_name, t.cluster_name)"
                "          IN (SELECT * FROM unnest(%s::text[], %s::text[])))",
                (OWNER_KEY, str(owner_uid), stack_id, [a for a, _ in wanted], [c for _, c in wanted]),
            )
            for agent_name, cluster_name in wanted:
                await _bind(conn, owner_uid, stack_id, agent_name, cluster_name, namespace)

    async def owned_targets(self, owner_uid: uuid.UUID) -> list[tuple[uuid.UUID, str, str]]:
        """(stack id, agent, cluster) of the rows an AgentTarget resource owns on live stacks."""
        async with self.connection() as conn:
            rows = await (
                await conn.execute(
                    "SELECT t.stack_id, t.agent_name, t.cluster_name FROM agent_targets t"
                    " JOIN annotations a ON a.external_object_id = t.id AND a.key = %s AND a.value = %s"
                    " JOIN stacks s ON s.id = t.stack_id AND s.deleted_at IS NULL",
                    (OWNER_KEY, str(owner_uid)),
                )
            ).fetchall()
            return [(stack_id, agent, cluster) for stack_id, agent, cluster in rows]

    async def permitted_agents(self, namespace: str) -> list[tuple[str, str, dict[str, str]]]:
        """(name, cluster, metadata.labels) of the live agents an AgentTarget in `namespace` may bind."""
        async with self.connection() as conn:
            rows = await (
                await conn.execute(
                    "SELECT name, cluster_name, selector_labels FROM agents a WHERE deleted_at IS NULL"
                    " AND stackyard_target_permitted(%s, a.name, a.cluster_name) ORDER BY name, cluster_name",
                    (namespace,),
                )
            ).fetchall()
            return [(name, cluster, dict(labels)) for name, cluster, labels in rows]

    async def remove_agent_targets(self, owner_uid: uuid.UUID) -> int:
        """Remove every target row owned by an AgentTarget resource; returns how many."""
        async with self.connection() as conn:
            cur = await conn.execute(
                "DELETE FROM agent_targets t USING annotations a"
                " WHERE a.external_object_id = t.id AND a.key = %s AND a.value = %s",
                (OWNER_KEY, str(owner_uid)),
            )
            return cur.rowcount

    async def target_rows(
        self, stack_id: uuid.UUID, agent_name: str | None = None, cluster_name: str | None = None
    ) -> list[TargetRow]:
        """The stack's targets (optionally one agent's) with each agent's latest event on this stack."""
        async with self.connection() as conn:
            cur = conn.cursor(row_factory=class_row(TargetRow))
            return await (await cur.execute(TARGET_ROWS_SQL, (stack_id, agent_name, agent_name, cluster_name, cluster_name))).fetchall()

    async def stacks_of_agent(self, agent_name: str, cluster_name: str) -> list[uuid.UUID]:
        """The stacks targeted to one agent."""
        async with self.connection() as conn:
            rows = await (await conn.execute(
                "SELECT DISTINCT stack_id FROM agent_targets WHERE agent_name = %s AND cluster_name = %s",
                (agent_name, cluster_name))).fetchall()
            return [row[0] for row in rows]

    async def targets_of_stack(self, stack_id: uuid.UUID) -> list[tuple[str, str]]:
        """(agent name, cluster name) of every target of a stack."""
        async with self.connection() as conn:
            rows = await (
                await conn.execute("SELECT agent_name, cluster_name FROM agent_targets WHERE stack_id = %s", (stack_id,))
            ).fetchall()
            return [(a, c) for a, c in rows]


# One row per target: the newest apply/delete event and the newest HEALTH event of its agent on this stack, each
# found through the target row's pointers (migration 0010), so the cost does not grow with the events an agent sent.
TARGET_ROWS_SQL = """
SELECT t.stack_id, t.agent_name, t.cluster_name, a.id AS agent_id, a.status AS agent_status, a.last_heartbeat,
       e.status AS event_status, e.message AS event_message, e.created_at AS event_time,
       e.sequence_id AS event_sequence_id, t.id AS target_id, t.released_sequence,
       h.details AS health_details, h.sequence_id AS health_sequence_id,
       dr.created_at AS drift_time, dr.message AS drift_message, a.selector_labels AS agent_labels,
       e.checksum AS event_checksum, stackyard_apply_as(t.agent_name, t.cluster_name, t.namespace) AS apply_as
  FROM agent_targets t
  LEFT JOIN agents a
         ON a.name = t.agent_name AND a.cluster_name = t.cluster_name AND a.deleted_at IS NULL
  LEFT JOIN LATERAL (
        SELECT ev.status, ev.message, ev.created_at, ev.checksum, d.sequence_id
          FROM agent_events ev JOIN deployment_objects d ON d.id = ev.deployment_object_id
         WHERE ev.id = t.last_event_id AND ev.agent_id = a.id) e ON true
  LEFT JOIN LATERAL (
        SELECT ev.details, d.sequence_id
          FROM agent_events ev JOIN deployment_objects d ON d.id = ev.deployment_object_id
         WHERE ev.id = t.last_health_event_id AND ev.agent_id = a.id) h ON true
  LEFT JOIN agent_events dr ON dr.id = t.last_drift_event_id AND dr.agent_id = a.id
 WHERE t.stack_id = %s
   AND (%s::text IS NULL OR t.agent_name = %s)
   AND (%s::text IS NULL OR t.cluster_name = %s)
 ORDER BY t.agent_name, t.cluster_name
"""


async def _bind(
    conn: psycopg.AsyncConnection[Any], owner_uid: uuid.UUID, stack_id: uuid.UUID | None, agent_name: str,
    cluster_name: str, namespace: str,
) -> None:
    """Bind one (agent, cluster) to a stack for an owner, or share another owner's row; checks tenancy."""
    permitted = await (
        await conn.execute("SELECT stackyard_target_permitted(%s, %s, %s)", (namespace, agent_name, cluster_name))
    ).fetchone()
    if not (permitted and permitted[0]):  # also when sharing a row: another namespace's binding grants nothing
        raise NotPermitted(
            f"agent {agent_name!r} in cluster {cluster_name!r} does not accept targets from namespace {namespace!r}:"
            " register it in this namespace, or list this namespace in the Agent's spec.allowedNamespaces"
            " (or match it by spec.allowedNamespaceSelector)"
        )
    assert stack_id is not None
    row_id = target_row_id(owner_uid, stack_id, agent_name, cluster_name)
    try:
        inserted = await (
            await conn.execute(
                "INSERT INTO agent_targets (id, stack_id, agent_name, cluster_name, namespace, released_sequence)"
                # a stack with a staged rollout releases to a new target too (advance_rollout): nothing yet
                " VALUES (%s, %s, %s, %s, %s,"
                "         (SELECT CASE WHEN rollout IS NULL THEN NULL ELSE 0 END FROM stacks WHERE id = %s))"
                # an existing binding (ours, or another AgentTarget's) is kept as it is: no write, no NOTIFY
                " ON CONFLICT (stack_id, agent_name, cluster_name) DO NOTHING RETURNING id",
                (row_id, stack_id, agent_name, cluster_name, namespace, stack_id),
            )
        ).fetchone()
    except psycopg.errors.InsufficientPrivilege as exc:
        raise NotPermitted(f"agent {agent_name!r} in cluster {cluster_name!r} does not accept targets from"
                           f" namespace {namespace!r}") from exc
    except psycopg.errors.ForeignKeyViolation as exc:
        raise NotFound(f"no stack {stack_id}") from exc
    if inserted is not None:
        await conn.execute(
            "INSERT INTO annotations (external_object_id, key, value) VALUES (%s, %s, %s)"
            " ON CONFLICT (external_object_id, key) DO NOTHING",
            (row_id, OWNER_KEY, str(owner_uid)),
        )
