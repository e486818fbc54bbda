"""Hot queries use indexes on realistic volumes (10,000 stacks, 50,000 deployment objects)."""

from __future__ import annotations

import json

from stackyard.store import DESIRED_STATE_SQL, LATEST_SQL


def plan_nodes(plan: dict) -> list[dict]:
    nodes = [plan]
    for child in plan.get("Plans", []):
        nodes += plan_nodes(child)
    return nodes


def explain(db, query: str, params) -> list[dict]:
    row = db.execute("EXPLAIN (FORMAT JSON) " + query, params).fetchone()[0]
    plan = row if isinstance(row, list) else json.loads(row)
    return plan_nodes(plan[0]["Plan"])


def test_hot_queries_use_indexes(db):
    db.execute(
        "INSERT INTO stacks (id, name) SELECT gen_random_uuid(), 'ns/stack-' || g FROM generate_series(1, 10000) g"
    )
    db.execute(
        "INSERT INTO deployment_objects (stack_id, yaml_content, yaml_checksum)"
        " SELECT s.id, 'v: ' || v, encode(sha256(('v' || v || s.id)::bytea), 'hex')"
        " FROM stacks s CROSS JOIN generate_series(1, 5) v"
    )
    db.execute(
        "INSERT INTO agent_targets (stack_id, agent_name, cluster_name)"
        " SELECT id, 'agent-' || (row_number() OVER () % 1000), 'cluster-1' FROM stacks"
    )
    db.execute(
        "INSERT INTO agents (name, cluster_name, pak_hash)"
        " SELECT 'agent-' || g, 'cluster-1', md5(g::text) FROM generate_series(0, 999) g"
    )
    db.execute(
        "INSERT INTO agent_events (agent_id, deployment_object_id, event_type, status)"
        " SELECT a.id, d.id, 'APPLY', 'SUCCESS' FROM agents a"
        " CROSS JOIN LATERAL (SELECT id FROM deployment_objects ORDER BY sequence_id LIMIT 20) d"
    )
    db.execute("ANALYZE")
    assert db.execute("SELECT count(*) FROM deployment_objects").fetchone()[0] == 50_000

    desired = explain(db, DESIRED_STATE_SQL, ("agent-7", "cluster-1"))
    scans = {(n["Node Type"], n.get("Relation Name")) for n in desired}
    assert not any(t == "Seq Scan" for t, _ in scans), scans
    assert any(n.get("Index Name") == "agent_targets_agent_cluster_idx" for n in desired)
    assert any(n.get("Index Name") == "deployment_objects_stack_sequence_idx" for n in desired)

    some = db.execute("SELECT id FROM stacks ORDER BY name LIMIT 1").fetchone()[0]
    latest = explain(db, LATEST_SQL, (some,))
    assert not any(n["Node Type"] == "Seq Scan" for n in latest), [n["Node Type"] for n in latest]
    assert any(n.get("Index Name") == "deployment_objects_stack_sequence_idx" for n in latest)

    by_pak = explain(db, "SELECT id FROM agents WHERE pak_hash = %s AND deleted_at IS NULL", ("x",))
    assert any(n.get("Index Name") == "agents_pak_hash_idx" for n in by_pak)
    events = explain(
        db,
        "SELECT * FROM agent_events WHERE agent_id = %s ORDER BY created_at DESC LIMIT 10",
        (db.execute("SELECT id FROM agents LIMIT 1").fetchone()[0],),
    )
    assert any(n.get("Index Name") == "agent_events_agent_created_idx" for n in events)
