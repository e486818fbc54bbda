"""What agents report: heartbeats and events (apply, delete, health, drift)."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg.rows import class_row
from psycopg.types.json import Jsonb

from .agents import Agent
from .base import NotFound, NotTargeted, StoreBase


@dataclass(frozen=True)
class EventRow:
    created_at: datetime
    event_type: str
    status: str
    message: str | None
    sequence_id: int


@dataclass(frozen=True)
class EventIn:
    deployment_object_id: uuid.UUID
    event_type: str
    status: str
    message: str
    details: Mapping[str, Any] | None = None
    checksum: str | None = None  # of the content the agent received (its rendering)


class EventQueries(StoreBase):
    """Heartbeats and events of agents, and the newest event of an agent."""

    async def heartbeat(self, agent_id: uuid.UUID, status: str = "ACTIVE", held_stacks: int | None = None
                        ) -> datetime:
        """Record a heartbeat (and how many stacks the agent holds, when it says); returns its time."""
        async with self.connection() as conn:
            row = await (
                await conn.execute(
                    "UPDATE agents SET last_heartbeat = now(), status = %s, held_stacks = %s"
                    " WHERE id = %s AND deleted_at IS NULL RETURNING last_heartbeat",
                    (status, held_stacks, agent_id),
                )
            ).fetchone()
            if row is None:
                raise NotFound(f"no live agent {agent_id}")
            at: datetime = row[0]
            return at

    async def last_event(self, agent_id: uuid.UUID) -> EventRow | None:
        """The agent's newest event, with the sequence id of its deployment object."""
        async with self.connection() as conn:
            cur = conn.cursor(row_factory=class_row(EventRow))
            return await (
                await cur.execute(
                    "SELECT e.created_at, e.event_type, e.status, e.message, d.sequence_id"
                    " FROM agent_events e JOIN deployment_objects d ON d.id = e.deployment_object_id"
                    " WHERE e.agent_id = %s AND e.deleted_at IS NULL ORDER BY e.created_at DESC LIMIT 1",
                    (agent_id,),
                )
            ).fetchone()

    async def record_events(self, agent: Agent, events: Sequence[EventIn], keep_per_object: int | None = None
                            ) -> list[uuid.UUID]:
        """Store a batch of events, all or nothing; every event must concern a stack targeted to the agent.

        With `keep_per_object`, the agent keeps at most that many events per deployment object: older ones go
        in the same transaction, except the newest of each kind that status shows (what target rows point at).
        """
        if not events:
            return []
        ids = sorted({event.deployment_object_id for event in events})
        async with self.connection() as conn, conn.transaction():
            rows = await (
                await conn.execute(
                    "SELECT d.id FROM deployment_objects d"
                    " JOIN agent_targets t ON t.stack_id = d.stack_id"
                    " WHERE d.id = ANY(%s) AND t.agent_name = %s AND t.cluster_name = %s",
                    (ids, agent.name, agent.cluster_name),
                )
            ).fetchall()
            allowed = {row[0] for row in rows}
            refused = [i for i in ids if i not in allowed]
            if refused:
                raise NotTargeted(refused)
            created: list[uuid.UUID] = []
            async with conn.cursor() as cur:
                for event in events:
                    await cur.execute(
                        "INSERT INTO agent_events (agent_id, deployment_object_id, event_type, status, message, details,"
                        " checksum) VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING id",
                        (agent.id, event.deployment_object_id, event.event_type, event.status, event.message,
                         Jsonb(dict(event.details)) if event.details is not None else None, event.checksum),
                    )
                    inserted = await cur.fetchone()
                    assert inserted is not None  # INSERT ... RETURNING always returns the row
                    created.append(inserted[0])
            if keep_per_object is not None:
                await conn.execute(TRIM_SQL, (agent.id, ids, keep_per_object, agent.name, agent.cluster_name))
            return created


# Events of one agent on some deployment objects beyond the newest `keep` of each object.
TRIM_SQL = """
DELETE FROM agent_events e
 WHERE e.id IN (SELECT id FROM (
                  SELECT id, row_number() OVER (PARTITION BY deployment_object_id ORDER BY created_at DESC, id DESC) AS n
                    FROM agent_events WHERE agent_id = %s AND deployment_object_id = ANY(%s)) ranked
                 WHERE n > %s)
   AND e.id NOT IN (SELECT p FROM agent_targets t, LATERAL (VALUES (t.last_event_id), (t.last_health_event_id),
                                                                (t.last_drift_event_id)) v(p)
                     WHERE t.agent_name = %s AND t.cluster_name = %s AND p IS NOT NULL)
"""
