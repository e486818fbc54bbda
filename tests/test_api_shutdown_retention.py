"""SIGTERM answers waiting long-polls and exits within 10 s; agent events stay bounded by count and age.

`stackyard api` runs as a real process over a real PostgreSQL; retention runs the operator's own pass
(`serve.purge_once`) on a real database.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from datetime import timedelta

import aiohttp

from stackyard.config import OperatorConfig
from stackyard.metrics import Metrics
from stackyard.serve import purge_once
from stackyard.store import TARGET_ROWS_SQL, EventIn
from stackyard.store.embedded import free_port

from .api_harness import make_agent, make_stack
from .test_api import call
from .test_api_faults import STATE, until


async def test_sigterm_answers_waiting_long_polls_and_exits_within_10s(db_url, store):
    _, token = await make_agent(store, "edge")
    await make_stack(store, "ns/web", "a: 1\n", targets=[("edge", "eu-1")])
    port, metrics_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("STACKYARD_")}
    env.update(STACKYARD_DATABASE_URL=db_url)
    proc = subprocess.Popen(
        [sys.executable, "-m", "stackyard", "api", "--api-address", f"127.0.0.1:{port}",
         "--metrics-address", f"127.0.0.1:{metrics_port}"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:
            async def up():
                try:
                    return (await call(http, "GET", url + "/readyz"))[0] == 200
                except aiohttp.ClientError:
                    return False

            await until(up, timeout=30)
            _, _, headers = await call(http, "GET", url + STATE, token)
            polls = [asyncio.create_task(call(http, "GET", url + STATE + "?wait=60", token,
                                              headers={"If-None-Match": headers["ETag"]})) for _ in range(3)]
            await asyncio.sleep(1.0)  # the long-polls are waiting
            assert not any(p.done() for p in polls)
            started = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            answers = await asyncio.wait_for(asyncio.gather(*polls), 5)
            answered = time.monotonic() - started
        assert [a[0] for a in answers] == [304, 304, 304], "each waiting long-poll is answered, not dropped"
        assert answered < 2, f"long-polls answered {answered:.1f}s after SIGTERM"
        out, err = proc.communicate(timeout=10)
        exited = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert exited < 10, f"exit {exited:.1f}s after SIGTERM"
    assert proc.returncode == 0, err[-3000:]
    assert "Traceback" not in err


def backdate(db, days: int) -> None:
    """Move every event `days` into the past (the timestamp trigger would refuse it: triggers off for this)."""
    db.execute("SET session_replication_role = replica")
    db.execute("UPDATE agent_events SET created_at = created_at - %s", (timedelta(days=days),))
    db.execute("SET session_replication_role = DEFAULT")


async def test_events_are_kept_by_count_as_they_arrive_and_by_age_on_schedule(store, db):
    agent_id, _ = await make_agent(store, "edge")
    agent = await store.get_agent(agent_id)
    stack_id, do = await make_stack(store, "ns/web", "a: 1\n", targets=[("edge", "eu-1")])
    for batch in range(20):  # 20 batches of 50 failures, then one success
        await store.record_events(agent, [EventIn(do, "APPLY", "FAILURE", f"try {batch}")] * 50, keep_per_object=50)
    await store.record_events(agent, [EventIn(do, "HEALTH", "SUCCESS", "ok", {"health": "Healthy"})],
                              keep_per_object=50)
    await store.record_events(agent, [EventIn(do, "APPLY", "SUCCESS", "applied")], keep_per_object=50)
    kept = db.execute("SELECT count(*) FROM agent_events").fetchone()[0]
    assert 50 <= kept <= 51, "1,002 events sent, the newest 50 of the deployment object kept"
    (row,) = await store.target_rows(stack_id)
    assert (row.event_status, row.event_message) == ("SUCCESS", "applied")
    assert row.health_details == {"health": "Healthy"}

    backdate(db, 10)
    config = OperatorConfig(database_url="unused", event_retention_age=timedelta(days=7))
    purged = await purge_once(store, config, Metrics())
    assert purged["agent_events_expired"] == kept - 2
    left = db.execute("SELECT event_type, status FROM agent_events ORDER BY event_type").fetchall()
    assert left == [("APPLY", "SUCCESS"), ("HEALTH", "SUCCESS")], "what status shows is never deleted"
    (row,) = await store.target_rows(stack_id)
    assert (row.event_status, row.health_details) == ("SUCCESS", {"health": "Healthy"})


def test_the_status_query_does_not_grow_with_the_events_an_agent_sent(db):
    db.execute("INSERT INTO stacks (id, name) VALUES ('00000000-0000-0000-0000-000000000001', 'ns/s')")
    db.execute("INSERT INTO deployment_objects (stack_id, yaml_content, yaml_checksum) SELECT"
               " '00000000-0000-0000-0000-000000000001', 'v: ' || g, md5(g::text) || md5(g::text)"
               " FROM generate_series(1, 20) g")
    db.execute("INSERT INTO agents (name, cluster_name) VALUES ('edge', 'c')")
    db.execute("INSERT INTO agent_targets (stack_id, agent_name, cluster_name, namespace)"
               " VALUES ('00000000-0000-0000-0000-000000000001', 'edge', 'c', 'ns')")
    db.execute("INSERT INTO agent_events (agent_id, deployment_object_id, event_type, status)"
               " SELECT a.id, d.id, 'APPLY', 'FAILURE' FROM agents a, deployment_objects d, generate_series(1, 5000)")
    db.execute("ANALYZE")
    plan = db.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + TARGET_ROWS_SQL,
                      ("00000000-0000-0000-0000-000000000001", None, None, None, None)).fetchone()[0]
    plan = plan if isinstance(plan, list) else json.loads(plan)
    touched = []

    def walk(node):
        if node.get("Relation Name") == "agent_events":
            touched.append((node["Node Type"], node.get("Index Name"), node.get("Actual Rows"),
                            node.get("Actual Loops")))
        for child in node.get("Plans", []):
            walk(child)

    walk(plan[0]["Plan"])
    assert touched, "the query reads the agent's newest events"
    assert all(index == "agent_events_pkey" and rows <= 1 for _, index, rows, _ in touched), touched
