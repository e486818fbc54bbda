"""Every rule of the data model (docs/architecture.md) that the database enforces by itself, exercised with raw SQL."""

from __future__ import annotations

import uuid

import psycopg
import pytest

from stackyard.store import EMPTY_SHA256, sha256_hex


def new_stack(db: psycopg.Connection, name: str = "team-a/web") -> uuid.UUID:
    return db.execute("INSERT INTO stacks (name) VALUES (%s) RETURNING id", (name,)).fetchone()[0]


def new_do(db: psycopg.Connection, stack_id: uuid.UUID, content: str = "kind: ConfigMap\n") -> uuid.UUID:
    return db.execute(
        "INSERT INTO deployment_objects (stack_id, yaml_content, yaml_checksum) VALUES (%s, %s, %s) RETURNING id",
        (stack_id, content, sha256_hex(content)),
    ).fetchone()[0]


def new_agent(db: psycopg.Connection, name: str = "edge-1", cluster: str = "eu-1") -> uuid.UUID:
    return db.execute(
        "INSERT INTO agents (name, cluster_name) VALUES (%s, %s) RETURNING id", (name, cluster)
    ).fetchone()[0]


def test_timestamps_are_set_by_triggers(db):
    stack = db.execute(
        "INSERT INTO stacks (name, created_at, updated_at) VALUES ('a/b', NULL, '2000-01-01') RETURNING id"
    ).fetchone()[0]
    created, updated = db.execute("SELECT created_at, updated_at FROM stacks WHERE id = %s", (stack,)).fetchone()
    assert created is not None and updated.year > 2000
    with db.transaction():
        db.execute("UPDATE stacks SET description = 'x', created_at = '1999-01-01' WHERE id = %s", (stack,))
    created2, updated2 = db.execute("SELECT created_at, updated_at FROM stacks WHERE id = %s", (stack,)).fetchone()
    assert created2 == created, "created_at cannot be rewritten"
    assert updated2 > updated
    for table, insert in (
        ("agents", "INSERT INTO agents (name, cluster_name) VALUES ('n', 'c') RETURNING id"),
    ):
        row_id = db.execute(insert).fetchone()[0]
        assert db.execute(f"SELECT created_at IS NOT NULL AND updated_at IS NOT NULL FROM {table} WHERE id = %s", (row_id,)).fetchone()[0]


def test_changing_deployment_object_content_raises(db):
    do = new_do(db, new_stack(db))
    for assignment in (
        "yaml_content = 'other'",
        "yaml_checksum = repeat('0', 64)",
        "stack_id = gen_random_uuid()",
        "is_deletion_marker = true",
        "sequence_id = sequence_id + 100",
    ):
        with pytest.raises(psycopg.errors.IntegrityConstraintViolation, match="immutable"):
            db.execute(f"UPDATE deployment_objects SET {assignment} WHERE id = %s", (do,))
    assert db.execute("SELECT yaml_content FROM deployment_objects WHERE id = %s", (do,)).fetchone()[0] == "kind: ConfigMap\n"


def test_setting_deleted_at_on_deployment_object_works(db):
    do = new_do(db, new_stack(db))
    db.execute("UPDATE deployment_objects SET deleted_at = now() WHERE id = %s", (do,))
    assert db.execute("SELECT deleted_at IS NOT NULL FROM deployment_objects WHERE id = %s", (do,)).fetchone()[0]


def test_deletion_marker_rows_may_change(db):
    stack = new_stack(db)
    db.execute("UPDATE stacks SET deleted_at = now() WHERE id = %s", (stack,))
    db.execute("UPDATE deployment_objects SET yaml_content = '# gone' WHERE stack_id = %s AND is_deletion_marker", (stack,))
    assert db.execute("SELECT yaml_content FROM deployment_objects WHERE stack_id = %s AND is_deletion_marker",
                      (stack,)).fetchone() == ("# gone",)


def test_hard_delete_of_deployment_object_only_through_function(db):
    do = new_do(db, new_stack(db))
    with pytest.raises(psycopg.errors.IntegrityConstraintViolation, match="hard_delete"):
        db.execute("DELETE FROM deployment_objects WHERE id = %s", (do,))
    assert db.execute("SELECT stackyard_hard_delete_deployment_object(%s)", (do,)).fetchone()[0] is True
    assert db.execute("SELECT count(*) FROM deployment_objects").fetchone()[0] == 0
    # the permission does not outlive the function within the same transaction
    do2 = new_do(db, new_stack(db, "a/other"))
    with db.transaction(), pytest.raises(psycopg.errors.IntegrityConstraintViolation):
        db.execute("SELECT stackyard_hard_delete_deployment_object(gen_random_uuid())")
        db.execute("DELETE FROM deployment_objects WHERE id = %s", (do2,))


def test_second_live_stack_with_same_name_raises_and_name_is_reusable_after_soft_delete(db):
    first = new_stack(db, "team-a/web")
    with pytest.raises(psycopg.errors.UniqueViolation):
        new_stack(db, "team-a/web")
    db.execute("UPDATE stacks SET deleted_at = now() WHERE id = %s", (first,))
    second = new_stack(db, "team-a/web")
    assert second != first


def test_agent_name_unique_per_cluster_among_live_rows(db):
    first = new_agent(db, "edge", "eu-1")
    new_agent(db, "edge", "us-1")  # same name, other cluster: fine
    with pytest.raises(psycopg.errors.UniqueViolation):
        new_agent(db, "edge", "eu-1")
    db.execute("UPDATE agents SET deleted_at = now() WHERE id = %s", (first,))
    new_agent(db, "edge", "eu-1")


def test_soft_deleting_stack_emits_one_marker_and_keeps_targets(db):
    stack = new_stack(db)
    old = [new_do(db, stack, f"v: {i}\n") for i in range(3)]
    db.execute("INSERT INTO agent_targets (stack_id, agent_name, cluster_name) VALUES (%s, 'edge', 'eu-1')", (stack,))
    db.execute("UPDATE stacks SET deleted_at = now() WHERE id = %s", (stack,))
    rows = db.execute(
        "SELECT id, is_deletion_marker, deleted_at IS NOT NULL, yaml_content, yaml_checksum, sequence_id"
        " FROM deployment_objects WHERE stack_id = %s ORDER BY sequence_id",
        (stack,),
    ).fetchall()
    markers = [r for r in rows if r[1]]
    assert len(markers) == 1
    marker = markers[0]
    assert marker[2] is False and marker[3] == "" and marker[4] == EMPTY_SHA256
    assert marker[5] == max(r[5] for r in rows), "the marker is the newest deployment object"
    assert {r[0] for r in rows if r[2]} == set(old), "every earlier deployment object is soft-deleted"
    assert db.execute("SELECT count(*) FROM agent_targets WHERE stack_id = %s", (stack,)).fetchone()[0] == 1
    # soft-deleting again does nothing; restoring is refused
    db.execute("UPDATE stacks SET deleted_at = now() WHERE id = %s", (stack,))
    assert db.execute("SELECT count(*) FROM deployment_objects WHERE is_deletion_marker").fetchone()[0] == 1
    with pytest.raises(psycopg.errors.IntegrityConstraintViolation):
        db.execute("UPDATE stacks SET deleted_at = NULL WHERE id = %s", (stack,))


def test_soft_deleting_agent_soft_deletes_its_events(db):
    agent = new_agent(db)
    other = new_agent(db, "edge-2")
    do = new_do(db, new_stack(db))
    for a in (agent, agent, other):
        db.execute(
            "INSERT INTO agent_events (agent_id, deployment_object_id, event_type, status) VALUES (%s, %s, 'APPLY', 'SUCCESS')",
            (a, do),
        )
    db.execute("UPDATE agents SET deleted_at = now() WHERE id = %s", (agent,))
    counts = dict(
        db.execute("SELECT agent_id, count(*) FILTER (WHERE deleted_at IS NOT NULL) FROM agent_events GROUP BY agent_id").fetchall()
    )
    assert counts == {agent: 2, other: 0}


def test_event_status_is_constrained(db):
    agent = new_agent(db)
    do = new_do(db, new_stack(db))
    with pytest.raises(psycopg.errors.CheckViolation):
        db.execute(
            "INSERT INTO agent_events (agent_id, deployment_object_id, event_type, status) VALUES (%s, %s, 'APPLY', 'MAYBE')",
            (agent, do),
        )


def orphan_counts(db: psycopg.Connection) -> dict[str, int]:
    return {
        "deployment_objects": db.execute(
            "SELECT count(*) FROM deployment_objects d WHERE NOT EXISTS (SELECT 1 FROM stacks s WHERE s.id = d.stack_id)"
        ).fetchone()[0],
        "labels": db.execute(
            "SELECT count(*) FROM labels l WHERE NOT EXISTS (SELECT 1 FROM stacks WHERE id = l.external_object_id)"
            " AND NOT EXISTS (SELECT 1 FROM agents WHERE id = l.external_object_id)"
            " AND NOT EXISTS (SELECT 1 FROM deployment_objects WHERE id = l.external_object_id)"
            " AND NOT EXISTS (SELECT 1 FROM agent_targets WHERE id = l.external_object_id)"
        ).fetchone()[0],
        "annotations": db.execute(
            "SELECT count(*) FROM annotations l WHERE NOT EXISTS (SELECT 1 FROM stacks WHERE id = l.external_object_id)"
            " AND NOT EXISTS (SELECT 1 FROM agents WHERE id = l.external_object_id)"
            " AND NOT EXISTS (SELECT 1 FROM deployment_objects WHERE id = l.external_object_id)"
            " AND NOT EXISTS (SELECT 1 FROM agent_targets WHERE id = l.external_object_id)"
        ).fetchone()[0],
    }


def populate(db: psycopg.Connection) -> tuple[uuid.UUID, uuid.UUID, uuid.UUID]:
    """A stack and an agent with everything hanging off them, plus an unrelated stack."""
    stack, keep = new_stack(db, "a/doomed"), new_stack(db, "a/kept")
    agent = new_agent(db)
    dos = [new_do(db, stack, f"v: {i}\n") for i in range(2)] + [new_do(db, keep)]
    target = db.execute(
        "INSERT INTO agent_targets (stack_id, agent_name, cluster_name) VALUES (%s, 'edge-1', 'eu-1') RETURNING id", (stack,)
    ).fetchone()[0]
    for obj in (stack, keep, agent, dos[0], target):
        db.execute("INSERT INTO labels (external_object_id, label) VALUES (%s, 'tier=web')", (obj,))
        db.execute("INSERT INTO annotations (external_object_id, key, value) VALUES (%s, 'owner', 'team-a')", (obj,))
    for do in dos:
        db.execute(
            "INSERT INTO agent_events (agent_id, deployment_object_id, event_type, status) VALUES (%s, %s, 'APPLY', 'SUCCESS')",
            (agent, do),
        )
    return stack, keep, agent


def test_hard_delete_stack_leaves_no_orphans(db):
    stack, keep, _agent = populate(db)
    db.execute("UPDATE stacks SET deleted_at = now() WHERE id = %s", (stack,))
    with pytest.raises(psycopg.errors.IntegrityConstraintViolation):
        db.execute("DELETE FROM stacks WHERE id = %s", (stack,))
    assert db.execute("SELECT stackyard_hard_delete_stack(%s)", (stack,)).fetchone()[0] is True
    assert orphan_counts(db) == {"deployment_objects": 0, "labels": 0, "annotations": 0}
    assert db.execute("SELECT count(*) FROM stacks").fetchone()[0] == 1
    assert db.execute("SELECT count(*) FROM deployment_objects WHERE stack_id = %s", (stack,)).fetchone()[0] == 0
    assert db.execute("SELECT count(*) FROM agent_targets").fetchone()[0] == 0
    assert db.execute("SELECT count(*) FROM agent_events").fetchone()[0] == 1, "the kept stack's event stays"
    assert db.execute("SELECT count(*) FROM labels WHERE external_object_id = %s", (keep,)).fetchone()[0] == 1
    # labels of the remaining agent and stack survive: 2 objects carry one label each
    assert db.execute("SELECT count(*) FROM labels").fetchone()[0] == 2


def test_hard_delete_agent_leaves_no_orphans(db):
    _stack, _keep, agent = populate(db)
    assert db.execute("SELECT stackyard_hard_delete_agent(%s)", (agent,)).fetchone()[0] is True
    assert db.execute("SELECT count(*) FROM agent_events").fetchone()[0] == 0
    assert db.execute("SELECT count(*) FROM labels WHERE external_object_id = %s", (agent,)).fetchone()[0] == 0
    assert db.execute("SELECT count(*) FROM annotations WHERE external_object_id = %s", (agent,)).fetchone()[0] == 0
    assert orphan_counts(db) == {"deployment_objects": 0, "labels": 0, "annotations": 0}


def test_retention_purges_only_soft_deleted_rows_past_the_age(db):
    old_stack, young_stack, live_stack = new_stack(db, "a/old"), new_stack(db, "a/young"), new_stack(db, "a/live")
    old_agent = new_agent(db, "old")
    for s in (old_stack, young_stack, live_stack):
        new_do(db, s)
        db.execute("INSERT INTO labels (external_object_id, label) VALUES (%s, 'x')", (s,))
    db.execute("UPDATE stacks SET deleted_at = now() - interval '10 days' WHERE id = %s", (old_stack,))
    db.execute("UPDATE stacks SET deleted_at = now() - interval '1 hour' WHERE id = %s", (young_stack,))
    db.execute("UPDATE agents SET deleted_at = now() - interval '10 days' WHERE id = %s", (old_agent,))
    purged = dict(db.execute("SELECT kind, purged FROM stackyard_purge_soft_deleted(interval '7 days')").fetchall())
    assert purged["stacks"] == 1 and purged["agents"] == 1
    remaining = {r[0] for r in db.execute("SELECT name FROM stacks")}
    assert remaining == {"a/young", "a/live"}
    assert db.execute("SELECT count(*) FROM agents").fetchone()[0] == 0
    assert db.execute("SELECT count(*) FROM labels").fetchone()[0] == 2
    assert orphan_counts(db) == {"deployment_objects": 0, "labels": 0, "annotations": 0}


def test_every_foreign_key_has_an_index(db):
    rows = db.execute(
        """
        SELECT c.conrelid::regclass::text, a.attname
          FROM pg_constraint c
          JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1]
         WHERE c.contype = 'f'
           AND NOT EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.conrelid AND i.indkey[0] = c.conkey[1])
        """
    ).fetchall()
    assert rows == []
