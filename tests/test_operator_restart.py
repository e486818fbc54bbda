"""Stopping the operator mid-way and starting it again resumes without duplicate rows."""

from __future__ import annotations

import uuid

from stackyard.controller.stacks import stack_row_name
from stackyard.controller.render import render_stack

from .builders import configmap
from .operator_harness import STACKS, OperatorThread, condition, eventually, operator_config


async def test_restart_mid_way_resumes_without_duplicates(kube_server, db_url, cluster, store, db):
    first = OperatorThread(kube_server, operator_config(db_url, kube_server)).start()
    try:
        for i in range(30):
            await cluster.create(STACKS, {"metadata": {"name": f"s{i:02d}"}, "spec": {"resources": [configmap(f"c{i}")]}})

        async def some_done():
            return db.execute("SELECT count(*) FROM deployment_objects").fetchone()[0] >= 3

        await eventually(some_done)
    finally:
        first.stop()  # mid-way: some Stacks are done, others not yet

    # a crash after the database write but before the status patch, simulated exactly:
    spec = {"resources": [configmap("crashed")]}
    created = await cluster.create(STACKS, {"metadata": {"name": "crashed"}, "spec": spec})
    crashed_id = uuid.UUID(created["metadata"]["uid"])
    await store.upsert_stack(crashed_id, stack_row_name("default", "crashed"), None)
    await store.emit_deployment_object(crashed_id, render_stack(spec)[0])

    second = OperatorThread(kube_server, operator_config(db_url, kube_server)).start()
    try:
        async def all_ready():
            for name in [f"s{i:02d}" for i in range(30)] + ["crashed"]:
                obj = await cluster.get(STACKS, name)
                ready = condition(obj, "Ready")
                if not ready or ready["status"] != "True":
                    return False
            return True

        await eventually(all_ready, timeout=60)
    finally:
        second.stop()
    assert db.execute("SELECT count(*) FROM stacks").fetchone()[0] == 31
    assert db.execute("SELECT count(*) FROM deployment_objects").fetchone()[0] == 31
    per_stack = db.execute("SELECT max(n) FROM (SELECT count(*) n FROM deployment_objects GROUP BY stack_id) c")
    assert per_stack.fetchone()[0] == 1
