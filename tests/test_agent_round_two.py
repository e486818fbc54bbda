"""The agent, round two: it waits instead of polling before its timers, its loops outlive any error, a deleted
Agent first removes what it holds, and removals and deletions in the target cluster are drift the tenant sees.

Both clusters are kmock emulators (no Kubernetes can run here); the operator, the API, PostgreSQL and the
agent's code are real.
"""

from __future__ import annotations

import asyncio
import logging
import time

from .loop_harness import CONFIGMAPS, agent_entry, configmap, setup_loop, start_agent, wait_applied
from .operator_harness import AGENT_TARGETS, AGENTS, STACKS, eventually
from .test_agent_steady_state import _count

STATE = "/api/v1/agents/self/target-state"


async def test_the_agent_waits_for_its_timers_instead_of_polling_before_them(operator_api, cluster, target, tmp_path):
    target_server, _view = target
    pak_file = await setup_loop(cluster, [configmap("a", namespace="apps")], tmp_path)
    resync = 2.0
    agent = await start_agent(operator_api.url, pak_file, target_server, poll_wait=30, resync_interval=resync,
                              health_poll_max=resync, heartbeat_interval=5.0)
    try:
        await wait_applied(cluster, "web")
        await cluster.wait_condition(STACKS, "web", "Healthy", "True")  # the first health check is done
        polls, lists = _count(operator_api, STATE), target_server.emulator.count("GET", "stackyard-system/configmaps")
        window = 5 * resync  # several periods of every timer: resync, health check
        await asyncio.sleep(window)  # the window measured, not a wait for a condition
        polls = _count(operator_api, STATE) - polls
        lists = target_server.emulator.count("GET", "stackyard-system/configmaps") - lists
    finally:
        await agent.stop()
    most = 2 * window / resync + 2  # a resync and a health check per period, each at most one poll
    assert polls <= most, f"{polls} target-state requests in {window:.0f}s with a {resync:.0f}s resync (at most {most})"
    assert lists <= most, f"{lists} inventory lists in {window:.0f}s"


async def test_the_heartbeat_survives_an_unexpected_error_logs_it_once_and_counts_it(operator_api, cluster, target,
                                                                                    tmp_path, caplog, store):
    target_server, _view = target
    pak_file = await setup_loop(cluster, [configmap("a", namespace="apps")], tmp_path)
    agent = await start_agent(operator_api.url, pak_file, target_server)
    broker, failures = agent.broker, 3
    real = broker.heartbeat

    async def flaky(report=None):
        nonlocal failures
        if failures:
            failures -= 1
            raise KeyError("heldStacks")  # a defect, not a broker error
        await real(report)

    broker.heartbeat = flaky
    caplog.set_level(logging.ERROR, "stackyard.agent.loop")
    try:
        await wait_applied(cluster, "web")
        agent_id = (await cluster.get(AGENTS, "edge"))["metadata"]["uid"]
        before = (await store.get_agent(agent_id)).last_heartbeat

        async def beats_again():
            row = await store.get_agent(agent_id)
            return failures == 0 and row.last_heartbeat is not None and row.last_heartbeat != before

        await eventually(beats_again, timeout=20)
        errors = agent.agent.metrics.task_errors_total.labels("heartbeat")._value.get()
    finally:
        await agent.stop()
    assert errors == 3
    logged = [r for r in caplog.records if "heartbeat failed unexpectedly" in r.getMessage()]
    assert len(logged) == 1 and logged[0].exc_info, "logged once, with its traceback"


async def test_deleting_stack_target_and_agent_together_first_removes_what_the_agent_holds(
        operator_api, cluster, target, tmp_path, store):
    target_server, view = target
    pak_file = await setup_loop(cluster, [configmap("a", namespace="apps")], tmp_path)
    agent = await start_agent(operator_api.url, pak_file, target_server)
    try:
        await wait_applied(cluster, "web")
        assert "a" in await view.configmaps()
        agent_id = (await cluster.get(AGENTS, "edge"))["metadata"]["uid"]
        started = time.monotonic()
        for resource, name in ((STACKS, "web"), (AGENT_TARGETS, "web-edge"), (AGENTS, "edge")):  # kubectl delete -f
            await cluster.delete(resource, name)
        await cluster.wait_gone(AGENTS, "edge", timeout=30)
        assert "a" not in await view.configmaps(), "the agent removed the objects before its key was revoked"
        assert (await store.get_agent(agent_id)) is None, "then the key was revoked (the row soft-deleted)"
        assert time.monotonic() - started < 30
    finally:
        await agent.stop()


async def test_a_removed_key_and_a_deleted_object_are_drift_the_stack_shows(operator_api, cluster, target, tmp_path,
                                                                           db):
    target_server, view = target
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "apps"}}
    pak_file = await setup_loop(cluster, [namespace, configmap("settings", {"x": "1", "y": "2"}, "apps"),
                                          configmap("other", {"k": "v"}, "apps")], tmp_path)
    agent = await start_agent(operator_api.url, pak_file, target_server, resync_interval=1.0)
    try:
        await wait_applied(cluster, "web")
        # kubectl edit removing a key: a merge patch of null, which leaves no managedFields trace of its writer
        await view.client.request("PATCH", CONFIGMAPS.path("apps", "settings"), {"data": {"x": None}},
                                  "application/merge-patch+json", params={"fieldManager": "kubectl-edit"})
        await view.client.delete(CONFIGMAPS.path("apps", "other"))

        async def both_reported():
            rows = db.execute("SELECT details FROM agent_events WHERE event_type = 'DRIFT'").fetchall()
            drifted = {d["object"]: d["fields"] for (details,) in rows for d in details["drifted"]}
            return drifted if len(drifted) == 2 else None

        drifted = await eventually(both_reported)
        assert drifted == {"v1/ConfigMap apps/settings": ["data.x"], "v1/ConfigMap apps/other": ["(deleted)"]}

        async def restored():
            configmaps = await view.configmaps()
            return "other" in configmaps and configmaps["settings"]["data"].get("x") == "1"

        await eventually(restored)

        async def shown():
            entry = agent_entry(await cluster.get(STACKS, "web"))
            return entry if entry and "lastDrift" in entry else None

        entry = await eventually(shown)
        assert "Drifted" in entry["lastDrift"]["message"] and entry["lastDrift"]["time"]
        async def on_the_agent_target():  # the tenant's AgentTarget shows it too, not only the Agent
            deployment = ((await cluster.get(AGENT_TARGETS, "web-edge"))["status"] or {}).get("deployment") or {}
            return "lastDrift" in deployment

        await eventually(on_the_agent_target)
    finally:
        await agent.stop()
