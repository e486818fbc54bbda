"""The desired state of an agent: for every stack targeted to it, the version released to it."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from psycopg.rows import class_row

from .base import StoreBase


@dataclass(frozen=True)
class DesiredStack:
    """One stack of an agent's desired state: its latest live deployment object."""

    stack_id: uuid.UUID
    stack_name: str
    stack_deleted: bool
    deployment_object_id: uuid.UUID
    sequence_id: int
    yaml_checksum: str
    yaml_content: str
    is_deletion_marker: bool
    overlays: list[dict[str, Any]] | None = None  # the version's overlays (None: no per-agent rendering)
    agent_labels: dict[str, str] | None = None  # the agent's labels, read with the version when it has overlays
    apply_as: dict[str, Any] | None = None  # {"serviceAccount": {...}} or {"refused": true}; None: as the agent


# (stack id, deployment object id, the agent's labels when the version has overlays, how it applies it)
Version = tuple[uuid.UUID, uuid.UUID, dict[str, str] | None, dict[str, Any] | None]


class DesiredStateQueries(StoreBase):
    """What the agent API serves: the full desired state, or only its versions (for an ETag)."""

    async def desired_state(self, agent_name: str, cluster_name: str) -> list[DesiredStack]:
        """For every stack targeted to (agent, cluster): its latest live deployment object.

        For a soft-deleted stack that is its deletion marker. Ordered by stack name.
        """
        async with self.connection() as conn:
            cur = conn.cursor(row_factory=class_row(DesiredStack))
            return await (await cur.execute(DESIRED_STATE_SQL, (agent_name, cluster_name))).fetchall()

    async def desired_versions(self, agent_name: str, cluster_name: str) -> list[Version]:
        """`Version`s of the desired state, without the YAML: enough for an ETag (what an agent receives depends
        on nothing else)."""
        async with self.connection() as conn:
            rows = await (await conn.execute(DESIRED_VERSIONS_SQL, (agent_name, cluster_name))).fetchall()
            return [(stack_id, do_id, labels, apply_as) for stack_id, do_id, labels, apply_as in rows]


# The version released to each target (agent_targets.released_sequence; NULL: the latest), and the deletion
# marker whatever was released: a deleted stack leaves every agent.
_RELEASED = """
         WHERE stack_id = s.id AND deleted_at IS NULL
           AND (t.released_sequence IS NULL OR sequence_id <= t.released_sequence OR is_deletion_marker)
         ORDER BY sequence_id DESC
         LIMIT 1) d"""

# The agent's labels, for a version with overlays only (its rendering depends on them; other versions do not).
_LABELS = """
       CASE WHEN d.overlays IS NOT NULL THEN
            (SELECT a.selector_labels FROM agents a
              WHERE a.name = t.agent_name AND a.cluster_name = t.cluster_name AND a.deleted_at IS NULL)
       END AS agent_labels,
       stackyard_apply_as(t.agent_name, t.cluster_name, t.namespace) AS apply_as"""

# A deleting agent (its Agent resource is being deleted) gets an empty desired state: it removes what it holds.
_NOT_DELETING = """
   AND NOT EXISTS (SELECT 1 FROM agents a WHERE a.name = t.agent_name AND a.cluster_name = t.cluster_name
                      AND a.deleted_at IS NULL AND a.deleting_since IS NOT NULL)"""

DESIRED_STATE_SQL = """
SELECT s.id AS stack_id, s.name AS stack_name, s.deleted_at IS NOT NULL AS stack_deleted,
       d.id AS deployment_object_id, d.sequence_id, d.yaml_checksum, d.yaml_content, d.is_deletion_marker,
       d.overlays,""" + _LABELS + """
  FROM agent_targets t
  JOIN stacks s ON s.id = t.stack_id
  CROSS JOIN LATERAL (
        SELECT id, sequence_id, yaml_checksum, yaml_content, is_deletion_marker, overlays
          FROM deployment_objects""" + _RELEASED + """
 WHERE t.agent_name = %s AND t.cluster_name = %s""" + _NOT_DELETING + """
 ORDER BY s.name, s.id
"""

DESIRED_VERSIONS_SQL = """
SELECT s.id, d.id,""" + _LABELS + """
  FROM agent_targets t
  JOIN stacks s ON s.id = t.stack_id
  CROSS JOIN LATERAL (
        SELECT id, overlays FROM deployment_objects""" + _RELEASED + """
 WHERE t.agent_name = %s AND t.cluster_name = %s""" + _NOT_DELETING + """
 ORDER BY s.name, s.id
"""
