"""Async data access over psycopg 3 and psycopg_pool. All of stackyard's SQL lives in `store/`."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg.rows import class_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
OWNER_KEY = "stackyard.dev/owner-uid"


class StoreError(Exception):
    """Base of the errors the store raises on purpose."""


class NotFound(StoreError):
    """The row asked for does not exist (or is soft-deleted)."""


class Conflict(StoreError):
    """The write would break a uniqueness rule; retrying will not help until input changes."""


class NotPermitted(StoreError):
    """A target names an agent that neither lives in the target's namespace nor grants it access."""


class Immutable(StoreError):
    """The write would change a value that is fixed once the row exists."""


class NotTargeted(StoreError):
    """An agent referred to deployment objects of stacks that are not targeted to it."""

    def __init__(self, ids: Sequence[uuid.UUID]):
        super().__init__(f"deployment objects not targeted to this agent: {', '.join(map(str, ids))}")
        self.ids = list(ids)


def target_row_id(owner_uid: uuid.UUID, stack_id: uuid.UUID, agent_name: str, cluster_name: str) -> uuid.UUID:
    """The id of the row an AgentTarget resource creates to bind one agent to a stack (derived, not random)."""
    return uuid.uuid5(owner_uid, f"{stack_id}/{agent_name}/{cluster_name}")


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


@dataclass(frozen=True)
class EmitResult:
    deployment_object: DeploymentObject
    created: bool


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


_DO_COLUMNS = "id, stack_id, sequence_id, yaml_checksum, submitted_at, is_deletion_marker, yaml_content"
_AGENT_COLUMNS = "id, name, cluster_name, status, last_heartbeat, pak_hash, created_at, pak_key_id"


class Store:
    """The PostgreSQL store behind the operator and the agent API."""

    def __init__(self, pool: AsyncConnectionPool):
        self.pool = pool

    @classmethod
    async def open(
        cls, url: str, min_size: int = 1, max_size: int = 10, timeout: float = 30.0, open_timeout: float = 30.0
    ) -> "Store":
        """Open a pool on `url` and wait (up to `open_timeout`) until it has its first connection.

        `timeout` bounds how long a caller waits for a connection later: during an outage
        every call fails after at most that long.

        Connections are in autocommit mode: a single statement needs no BEGIN/COMMIT
        round trips; every multi-statement write uses an explicit transaction block.
        """
        pool = AsyncConnectionPool(url, min_size=min_size, max_size=max_size, open=False, timeout=timeout,
                                   kwargs={"autocommit": True})
        await pool.open(wait=True, timeout=open_timeout)
        return cls(pool)

    async def close(self) -> None:
        await self.pool.close()

    # Stacks -----------------------------------------------------------------

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
        async with self.pool.connection() as conn, conn.transaction():
            await _upsert_stack(conn, stack_id, name, description, labels, annotations or {})

    async def save_stack(
        self,
        stack_id: uuid.UUID,
        name: str,
        description: str | None,
        labels: Iterable[str],
        annotations: Mapping[str, str],
        yaml_content: str,
        rollout: Mapping[str, Any] | None = None,
    ) -> EmitResult:
        """`upsert_stack` and `emit_deployment_object` in one transaction (one reconcile, one round of locks).

        With a `rollout` policy, targets that follow the latest version are pinned to the current one first,
        so a new version reaches them only when the operator releases it (`advance_rollout`). Without one,
        every target follows the latest version again.
        """
        async with self.pool.connection() as conn, conn.transaction():
            await _upsert_stack(conn, stack_id, name, description, labels, annotations)
            await _set_rollout(conn, stack_id, rollout)
            return await _emit(conn, stack_id, yaml_content)

    async def stack_rollout(self, stack_id: uuid.UUID) -> Mapping[str, Any] | None:
        """The stack's stored rollout policy (None: no staged rollout)."""
        async with self.pool.connection() as conn:
            row = await (await conn.execute("SELECT rollout FROM stacks WHERE id = %s", (stack_id,))).fetchone()
            return row[0] if row else None

    async def advance_rollout(
        self,
        stack_id: uuid.UUID,
        decide: Callable[[Mapping[str, Any] | None, DeploymentObject | None, list[TargetRow]], list[tuple[str, str]]],
    ) -> list[tuple[str, str]]:
        """Release the latest version to the targets `decide` picks from the policy, the latest version and the
        target rows, all read and written in one transaction with the stack row locked (no double release)."""
        async with self.pool.connection() as conn, conn.transaction():
            row = await (await conn.execute(
                "SELECT rollout FROM stacks WHERE id = %s AND deleted_at IS NULL FOR UPDATE", (stack_id,))).fetchone()
            if row is None or row[0] is None:
                return []
            latest = await (await conn.cursor(row_factory=class_row(DeploymentObject)).execute(
                _LATEST_SQL, (stack_id,))).fetchone()
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

    async def emit_deployment_object(self, stack_id: uuid.UUID, yaml_content: str) -> EmitResult:
        """Insert a deployment object unless the stack's latest one has the same checksum.

        The stack row is locked for the check, so concurrent callers with the
        same content produce exactly one row; the others get the existing one.
        """
        async with self.pool.connection() as conn, conn.transaction():
            return await _emit(conn, stack_id, yaml_content)

    async def latest_deployment_object(self, stack_id: uuid.UUID) -> DeploymentObject | None:
        """The stack's newest live deployment object (its deletion marker once deleted)."""
        async with self.pool.connection() as conn:
            cur = conn.cursor(row_factory=class_row(DeploymentObject))
            return await (await cur.execute(_LATEST_SQL, (stack_id,))).fetchone()

    async def soft_delete_stack(self, stack_id: uuid.UUID) -> bool:
        """Soft-delete a stack (the database emits its deletion marker); False if already gone."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "UPDATE stacks SET deleted_at = now() WHERE id = %s AND deleted_at IS NULL", (stack_id,)
            )
            return cur.rowcount == 1

    async def live_stack_id(self, name: str) -> uuid.UUID | None:
        """The id of the live stack called `name`, if any."""
        async with self.pool.connection() as conn:
            row = await (
                await conn.execute("SELECT id FROM stacks WHERE name = %s AND deleted_at IS NULL", (name,))
            ).fetchone()
            return row[0] if row else None

    async def purge_soft_deleted(self, older_than: timedelta) -> dict[str, int]:
        """Retention: hard-delete soft-deleted rows older than `older_than`; counts per table."""
        async with self.pool.connection() as conn:
            rows = await (
                await conn.execute("SELECT kind, purged FROM stackyard_purge_soft_deleted(%s)", (older_than,))
            ).fetchall()
            return {kind: purged for kind, purged in rows}

    # Agent targets ------------------------------------------------------------

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
        async with self.pool.connection() as conn, conn.transaction():
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
        async with self.pool.connection() as conn:
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
        async with self.pool.connection() as conn:
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
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "DELETE FROM agent_targets t USING annotations a"
                " WHERE a.external_object_id = t.id AND a.key = %s AND a.value = %s",
                (OWNER_KEY, str(owner_uid)),
            )
            return cur.rowcount

    # Agents ---------------------------------------------------------------------

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
    ) -> Agent:
        """Create or update a live agent row with these labels, annotations and grants; Immutable on a rename.

        `namespace` is the Agent resource's; `allowed_namespaces` the namespaces it accepts targets from
        besides its own. Targets it no longer permits are removed by the database.
        """
        async with self.pool.connection() as conn, conn.transaction():
            try:
                cur = conn.cursor(row_factory=class_row(Agent))
                agent = await (
                    await cur.execute(
                        "INSERT INTO agents (id, name, cluster_name, namespace, allowed_namespaces, selector_labels)"
                        " VALUES (%s, %s, %s, %s, %s, %s)"
                        " ON CONFLICT (id) DO UPDATE SET namespace = EXCLUDED.namespace,"
                        " allowed_namespaces = EXCLUDED.allowed_namespaces, selector_labels = EXCLUDED.selector_labels"
                        # name and cluster are fixed once the row exists: no row back means a rename was asked
                        " WHERE (agents.name, agents.cluster_name) = (EXCLUDED.name, EXCLUDED.cluster_name)"
                        f" RETURNING {_AGENT_COLUMNS}",
                        (agent_id, name, cluster_name, namespace, sorted(set(allowed_namespaces)),
                         Jsonb(dict(selector_labels or {}))),
                    )
                ).fetchone()
            except psycopg.errors.UniqueViolation as exc:
                raise Conflict(f"another live agent is already called {name!r} in cluster {cluster_name!r}") from exc
            if agent is None:
                raise Immutable(f"agent {agent_id} is registered under another name or cluster; both are immutable")
            await _replace_metadata(conn, agent_id, labels, annotations or {})
            return agent

    async def set_agent_pak_hash(self, agent_id: uuid.UUID, pak_hash: str, key_id: str | None = None) -> None:
        """Store the sha256 of a new PAK secret and its key id; the previous key stops working at once."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "UPDATE agents SET pak_hash = %s, pak_key_id = %s WHERE id = %s AND deleted_at IS NULL",
                (pak_hash, key_id, agent_id),
            )
            if cur.rowcount != 1:
                raise NotFound(f"no live agent {agent_id}")

    async def get_agent(self, agent_id: uuid.UUID) -> Agent | None:
        async with self.pool.connection() as conn:
            cur = conn.cursor(row_factory=class_row(Agent))
            return await (
                await cur.execute(f"SELECT {_AGENT_COLUMNS} FROM agents WHERE id = %s AND deleted_at IS NULL", (agent_id,))
            ).fetchone()

    async def agent_by_pak_hash(self, pak_hash: str) -> Agent | None:
        """The live agent whose stored PAK hash is `pak_hash`."""
        async with self.pool.connection() as conn:
            cur = conn.cursor(row_factory=class_row(Agent))
            return await (
                await cur.execute(
                    f"SELECT {_AGENT_COLUMNS} FROM agents WHERE pak_hash = %s AND deleted_at IS NULL", (pak_hash,)
                )
            ).fetchone()

    async def agent_metadata(self, agent_id: uuid.UUID) -> tuple[list[str], dict[str, str]]:
        """Labels and annotations recorded for an agent."""
        return await self._metadata(agent_id)

    async def _metadata(self, object_id: uuid.UUID) -> tuple[list[str], dict[str, str]]:
        async with self.pool.connection() as conn:
            labels = await (
                await conn.execute("SELECT label FROM labels WHERE external_object_id = %s ORDER BY label", (object_id,))
            ).fetchall()
            annotations = await (
                await conn.execute(
                    "SELECT key, value FROM annotations WHERE external_object_id = %s ORDER BY key", (object_id,)
                )
            ).fetchall()
            return [row[0] for row in labels], {key: value for key, value in annotations}

    async def heartbeat(self, agent_id: uuid.UUID, status: str = "ACTIVE") -> datetime:
        """Record a heartbeat; returns its time."""
        async with self.pool.connection() as conn:
            row = await (
                await conn.execute(
                    "UPDATE agents SET last_heartbeat = now(), status = %s WHERE id = %s AND deleted_at IS NULL"
                    " RETURNING last_heartbeat",
                    (status, agent_id),
                )
            ).fetchone()
            if row is None:
                raise NotFound(f"no live agent {agent_id}")
            at: datetime = row[0]
            return at

    async def soft_delete_agent(self, agent_id: uuid.UUID) -> bool:
        """Soft-delete an agent (its events follow); False if already gone."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "UPDATE agents SET deleted_at = now() WHERE id = %s AND deleted_at IS NULL", (agent_id,)
            )
            return cur.rowcount == 1

    async def agent_by_name(self, name: str, cluster_name: str) -> Agent | None:
        """The live agent called `name` in `cluster_name`."""
        async with self.pool.connection() as conn:
            cur = conn.cursor(row_factory=class_row(Agent))
            return await (
                await cur.execute(
                    f"SELECT {_AGENT_COLUMNS} FROM agents WHERE name = %s AND cluster_name = %s AND deleted_at IS NULL",
                    (name, cluster_name),
                )
            ).fetchone()

    async def last_event(self, agent_id: uuid.UUID) -> EventRow | None:
        """The agent's newest event, with the sequence id of its deployment object."""
        async with self.pool.connection() as conn:
            cur = conn.cursor(row_factory=class_row(EventRow))
            return await (
                await cur.execute(
                    "SELECT e.created_at, e.event_type, e.status, e.message, d.sequence_id"
                    " FROM agent_events e JOIN deployment_objects d ON d.id = e.deployment_object_id"
                    " WHERE e.agent_id = %s AND e.deleted_at IS NULL ORDER BY e.created_at DESC LIMIT 1",
                    (agent_id,),
                )
            ).fetchone()

    async def agent_heartbeats(self) -> list[datetime | None]:
        """The last heartbeat of every live agent (None: never heard from)."""
        async with self.pool.connection() as conn:
            rows = await (await conn.execute("SELECT last_heartbeat FROM agents WHERE deleted_at IS NULL")).fetchall()
            return [row[0] for row in rows]

    async def target_rows(
        self, stack_id: uuid.UUID, agent_name: str | None = None, cluster_name: str | None = None
    ) -> list[TargetRow]:
        """The stack's targets (optionally one agent's) with each agent's latest event on this stack."""
        async with self.pool.connection() as conn:
            cur = conn.cursor(row_factory=class_row(TargetRow))
            return await (await cur.execute(TARGET_ROWS_SQL, (stack_id, agent_name, agent_name, cluster_name, cluster_name))).fetchall()

    async def targets_of_stack(self, stack_id: uuid.UUID) -> list[tuple[str, str]]:
        """(agent name, cluster name) of every target of a stack."""
        async with self.pool.connection() as conn:
            rows = await (
                await conn.execute("SELECT agent_name, cluster_name FROM agent_targets WHERE stack_id = %s", (stack_id,))
            ).fetchall()
            return [(a, c) for a, c in rows]

    async def ping(self, timeout: float = 2.0) -> None:
        """Raise unless the database answers within `timeout` seconds."""
        async with self.pool.connection(timeout=timeout) as conn:
            await conn.execute("SELECT 1")

    # Agent protocol -------------------------------------------------------------

    async def desired_state(self, agent_name: str, cluster_name: str) -> list[DesiredStack]:
        """For every stack targeted to (agent, cluster): its latest live deployment object.

        For a soft-deleted stack that is its deletion marker. Ordered by stack name.
        """
        async with self.pool.connection() as conn:
            cur = conn.cursor(row_factory=class_row(DesiredStack))
            return await (await cur.execute(DESIRED_STATE_SQL, (agent_name, cluster_name))).fetchall()

    async def desired_versions(self, agent_name: str, cluster_name: str) -> list[tuple[uuid.UUID, uuid.UUID]]:
        """(stack id, deployment object id) of the desired state, without the YAML: enough for an ETag."""
        async with self.pool.connection() as conn:
            rows = await (await conn.execute(DESIRED_VERSIONS_SQL, (agent_name, cluster_name))).fetchall()
            return [(stack_id, do_id) for stack_id, do_id in rows]

    async def record_events(self, agent: Agent, events: Sequence[EventIn]) -> list[uuid.UUID]:
        """Store a batch of events, all or nothing; every event must concern a stack targeted to the agent."""
        if not events:
            return []
        ids = sorted({event.deployment_object_id for event in events})
        async with self.pool.connection() as conn, conn.transaction():
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
                        "INSERT INTO agent_events (agent_id, deployment_object_id, event_type, status, message, details)"
                        " VALUES (%s, %s, %s, %s, %s, %s) RETURNING id",
                        (agent.id, event.deployment_object_id, event.event_type, event.status, event.message,
                         Jsonb(dict(event.details)) if event.details is not None else None),
                    )
                    inserted = await cur.fetchone()
                    assert inserted is not None  # INSERT ... RETURNING always returns the row
                    created.append(inserted[0])
            return created


TABLES = ("stacks", "agents", "deployment_objects", "agent_events", "agent_targets", "labels", "annotations")

_LATEST_SQL = (
    f"SELECT {_DO_COLUMNS} FROM deployment_objects"
    " WHERE stack_id = %s AND deleted_at IS NULL ORDER BY sequence_id DESC LIMIT 1"
)

# The version released to each target (agent_targets.released_sequence; NULL: the latest), and the deletion
# marker whatever was released: a deleted stack leaves every agent.
_RELEASED = """
         WHERE stack_id = s.id AND deleted_at IS NULL
           AND (t.released_sequence IS NULL OR sequence_id <= t.released_sequence OR is_deletion_marker)
         ORDER BY sequence_id DESC
         LIMIT 1) d"""

DESIRED_STATE_SQL = """
SELECT s.id AS stack_id, s.name AS stack_name, s.deleted_at IS NOT NULL AS stack_deleted,
       d.id AS deployment_object_id, d.sequence_id, d.yaml_checksum, d.yaml_content, d.is_deletion_marker
  FROM agent_targets t
  JOIN stacks s ON s.id = t.stack_id
  CROSS JOIN LATERAL (
        SELECT id, sequence_id, yaml_checksum, yaml_content, is_deletion_marker
          FROM deployment_objects""" + _RELEASED + """
 WHERE t.agent_name = %s AND t.cluster_name = %s
 ORDER BY s.name, s.id
"""

DESIRED_VERSIONS_SQL = """
SELECT s.id, d.id
  FROM agent_targets t
  JOIN stacks s ON s.id = t.stack_id
  CROSS JOIN LATERAL (
        SELECT id FROM deployment_objects""" + _RELEASED + """
 WHERE t.agent_name = %s AND t.cluster_name = %s
 ORDER BY s.name, s.id
"""

TARGET_ROWS_SQL = """
SELECT t.stack_id, t.agent_name, t.cluster_name, a.id AS agent_id, a.status AS agent_status, a.last_heartbeat,
       e.status AS event_status, e.message AS event_message, e.created_at AS event_time,
       e.sequence_id AS event_sequence_id, t.id AS target_id, t.released_sequence,
       h.details AS health_details, h.sequence_id AS health_sequence_id
  FROM agent_targets t
  LEFT JOIN agents a
         ON a.name = t.agent_name AND a.cluster_name = t.cluster_name AND a.deleted_at IS NULL
  LEFT JOIN LATERAL (
        SELECT ev.status, ev.message, ev.created_at, d.sequence_id
          FROM agent_events ev
          JOIN deployment_objects d ON d.id = ev.deployment_object_id
         WHERE ev.agent_id = a.id AND d.stack_id = t.stack_id AND ev.deleted_at IS NULL
           AND ev.event_type NOT IN ('HEALTH', 'DRIFT')
         ORDER BY ev.created_at DESC
         LIMIT 1) e ON true
  LEFT JOIN LATERAL (
        SELECT ev.details, d.sequence_id
          FROM agent_events ev
          JOIN deployment_objects d ON d.id = ev.deployment_object_id
         WHERE ev.agent_id = a.id AND d.stack_id = t.stack_id AND ev.deleted_at IS NULL
           AND ev.event_type = 'HEALTH'
         ORDER BY ev.created_at DESC
         LIMIT 1) h ON true
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


async def _upsert_stack(
    conn: psycopg.AsyncConnection,
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
    await _replace_metadata(conn, stack_id, labels, annotations)


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


async def _emit(conn: psycopg.AsyncConnection, stack_id: uuid.UUID, yaml_content: str) -> EmitResult:
    """Insert a deployment object unless the latest has the same checksum (the stack row is locked)."""
    checksum = sha256_hex(yaml_content)
    locked = await (
        await conn.execute("SELECT 1 FROM stacks WHERE id = %s AND deleted_at IS NULL FOR UPDATE", (stack_id,))
    ).fetchone()
    if locked is None:
        raise NotFound(f"no live stack {stack_id}")
    cur = conn.cursor(row_factory=class_row(DeploymentObject))
    latest = await (await cur.execute(_LATEST_SQL, (stack_id,))).fetchone()
    if latest is not None and latest.yaml_checksum == checksum:
        return EmitResult(latest, created=False)
    created: DeploymentObject | None = await (
        await cur.execute(
            f"INSERT INTO deployment_objects (stack_id, yaml_content, yaml_checksum)"
            f" VALUES (%s, %s, %s) RETURNING {_DO_COLUMNS}",
            (stack_id, yaml_content, checksum),
        )
    ).fetchone()
    assert created is not None  # INSERT ... RETURNING always returns the row
    return EmitResult(created, created=True)


async def _replace_metadata(
    conn: psycopg.AsyncConnection, object_id: uuid.UUID, labels: Iterable[str], annotations: Mapping[str, str]
) -> None:
    """Make an object's labels and annotations exactly the given ones."""
    label_list = sorted(set(labels))
    await conn.execute(
        "DELETE FROM labels WHERE external_object_id = %s AND NOT (label = ANY(%s))", (object_id, label_list)
    )
    if label_list:
        await conn.execute(
            "INSERT INTO labels (external_object_id, label) SELECT %s, unnest(%s::varchar[])"
            " ON CONFLICT (external_object_id, label) DO NOTHING",
            (object_id, label_list),
        )
    keys = sorted(annotations)
    await conn.execute(
        "DELETE FROM annotations WHERE external_object_id = %s AND NOT (key = ANY(%s))", (object_id, keys)
    )
    if keys:
        await conn.execute(
            "INSERT INTO annotations (external_object_id, key, value)"
            " SELECT %s, k, v FROM unnest(%s::varchar[], %s::text[]) AS u(k, v)"
            " ON CONFLICT (external_object_id, key) DO UPDATE SET value = EXCLUDED.value"
            " WHERE annotations.value IS DISTINCT FROM EXCLUDED.value",
            (object_id, keys, [annotations[k] for k in keys]),
        )
