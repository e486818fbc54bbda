"""`stackyard db migrate` creates exactly the schema of the data model (docs/architecture.md), once, safely under concurrency."""

from __future__ import annotations

import threading

import psycopg

from stackyard import protocol
from stackyard.store.migrate import VERSION_TABLE, available_migrations, migrate

TS = ("timestamp with time zone", None)
UUID = ("uuid", None)
TEXT = ("text", None)


def varchar(n: int) -> tuple[str, int]:
    return ("character varying", n)


EXPECTED = {
    "stacks": {
        "id": UUID, "created_at": TS, "updated_at": TS, "deleted_at": TS,
        # "<namespace>/<name>": 63 + 1 + 253 characters, what Kubernetes allows (the data design said 255)
        "name": varchar(317), "description": TEXT, "agent_target": UUID,
        "rollout": ("jsonb", None),  # beyond the data design: spec.rollout, the staged rollout policy
    },
    "agents": {
        "id": UUID, "created_at": TS, "updated_at": TS, "deleted_at": TS, "name": varchar(255),
        "cluster_name": varchar(255), "last_heartbeat": TS, "status": varchar(50), "pak_hash": TEXT,
        "pak_key_id": TEXT,  # beyond the data design: a key authenticates only with the id it was issued with
        "namespace": TEXT, "allowed_namespaces": ("ARRAY", None),  # beyond the data design: tenancy
        "selector_labels": ("jsonb", None),  # beyond the data design: metadata.labels, for agentSelector
        # beyond the data design: what the agent holds (its heartbeat), and when its Agent began to be deleted
        "held_stacks": ("integer", None), "deleting_since": TS,
        # beyond the data design: least privilege in the target cluster (service accounts to impersonate)
        "impersonate": ("jsonb", None), "impersonation_required": ("boolean", None),
    },
    "deployment_objects": {
        "id": UUID, "created_at": TS, "updated_at": TS, "deleted_at": TS, "sequence_id": ("bigint", None),
        "stack_id": UUID, "yaml_content": TEXT, "yaml_checksum": TEXT, "submitted_at": TS,
        "is_deletion_marker": ("boolean", None),
        "key_id": TEXT,  # beyond the data design: the key that sealed its Secret values (README, "Secrets")
        "overlays": ("jsonb", None),  # beyond the data design: per-agent patches (README, "Per-cluster customization")
    },
    "agent_events": {
        "id": UUID, "created_at": TS, "updated_at": TS, "deleted_at": TS, "agent_id": UUID,
        "deployment_object_id": UUID, "event_type": varchar(50), "status": varchar(10), "message": TEXT,
        "details": ("jsonb", None),  # beyond the data design: a HEALTH or DRIFT event's bounded summary
        "checksum": TEXT,  # beyond the data design: the checksum of the agent's rendering it applied
    },
    "agent_targets": {
        "id": UUID, "stack_id": UUID, "agent_name": TEXT, "cluster_name": TEXT,
        "namespace": TEXT,  # beyond the data design: the AgentTarget's namespace (tenancy)
        "released_sequence": ("bigint", None),  # beyond the data design: the version the rollout released
        # beyond the data design: the agent's newest apply and HEALTH events on this stack (bounded status reads)
        "last_event_id": UUID, "last_health_event_id": UUID, "last_drift_event_id": UUID,
    },
    "labels": {"id": UUID, "external_object_id": UUID, "label": varchar(255)},
    "annotations": {"id": UUID, "external_object_id": UUID, "key": varchar(255), "value": TEXT},
}


def columns(conn: psycopg.Connection) -> dict[str, dict[str, tuple]]:
    found: dict[str, dict[str, tuple]] = {}
    for table, column, data_type, length in conn.execute(
        "SELECT table_name, column_name, data_type, character_maximum_length"
        " FROM information_schema.columns WHERE table_schema = 'public'"
    ):
        found.setdefault(table, {})[column] = (data_type, length)
    return found


def test_migrate_creates_exactly_the_design_schema(empty_db_url):
    assert migrate(empty_db_url) == [m.version for m in available_migrations()]
    with psycopg.connect(empty_db_url) as conn:
        found = columns(conn)
        version_table = found.pop(VERSION_TABLE)
        assert set(version_table) == {"version", "name", "applied_at"}
        assert found == EXPECTED
        pk = conn.execute(
            "SELECT tc.table_name, kcu.column_name FROM information_schema.table_constraints tc"
            " JOIN information_schema.key_column_usage kcu USING (constraint_schema, constraint_name)"
            " WHERE tc.constraint_type = 'PRIMARY KEY' AND tc.table_schema = 'public'"
        ).fetchall()
        assert {t: c for t, c in pk if t != VERSION_TABLE} == {t: "id" for t in EXPECTED}
        uniques = {
            row[0]
            for row in conn.execute(
                "SELECT indexdef FROM pg_indexes WHERE schemaname = 'public' AND indexdef LIKE 'CREATE UNIQUE%%'"
            )
        }
        assert any("agent_targets" in u and "(stack_id, agent_name, cluster_name)" in u for u in uniques)
        assert any("labels" in u and "(external_object_id, label)" in u for u in uniques)
        assert any("annotations" in u and "(external_object_id, key)" in u for u in uniques)
        fks = {
            (row[0], row[1])
            for row in conn.execute(
                "SELECT conrelid::regclass::text, confrelid::regclass::text FROM pg_constraint WHERE contype = 'f'"
            )
        }
        assert fks == {
            ("deployment_objects", "stacks"),
            ("agent_events", "agents"),
            ("agent_events", "deployment_objects"),
            ("agent_targets", "stacks"),
        }


def test_migrate_twice_is_a_no_op(empty_db_url):
    assert migrate(empty_db_url)
    with psycopg.connect(empty_db_url) as conn:
        before = conn.execute(f"SELECT version, applied_at FROM {VERSION_TABLE} ORDER BY version").fetchall()
    assert migrate(empty_db_url) == []
    with psycopg.connect(empty_db_url) as conn:
        after = conn.execute(f"SELECT version, applied_at FROM {VERSION_TABLE} ORDER BY version").fetchall()
    assert before == after


def test_two_migrations_at_once_are_safe(empty_db_url):
    """Two replicas starting together: one applies everything, the other nothing, no error."""
    results: list[list[int]] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def run() -> None:
        try:
            barrier.wait(timeout=10)
            results.append(migrate(empty_db_url))
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    all_versions = [m.version for m in available_migrations()]
    assert sorted(results, key=len) == [[], all_versions]
    with psycopg.connect(empty_db_url) as conn:
        assert conn.execute(f"SELECT count(*) FROM {VERSION_TABLE}").fetchone()[0] == len(all_versions)



def test_the_database_holds_whatever_the_agent_contract_allows(db):
    """The columns and CHECKs that store agent bodies admit everything stackyard.protocol allows."""
    found = columns(db)
    assert found["agent_events"]["event_type"][1] >= protocol.MAX_EVENT_TYPE_LENGTH
    assert found["agent_events"]["message"][0] == "text"
    assert found["agent_events"]["details"][0] == "jsonb"
    assert found["agents"]["status"][1] >= max(map(len, protocol.HEARTBEAT_STATUSES))
    assert found["agents"]["held_stacks"][0] == "integer" and protocol.MAX_HELD_STACKS < 2**31
    checks = " ".join(row[0] for row in db.execute(
        "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = 'agent_events'::regclass"))
    for status in protocol.EVENT_STATUSES:
        assert f"'{status}'" in checks, "every status the contract allows passes the CHECK"
    assert f"length(checksum) <= {protocol.MAX_CHECKSUM_LENGTH}" in checks
    agent_checks = " ".join(row[0] for row in db.execute(
        "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = 'agents'::regclass"))
    assert "held_stacks >= 0" in agent_checks
