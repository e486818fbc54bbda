"""Label-selector AgentTargets: one row per selected Agent, kept current as Agents come, go and relabel.

A real Kopf operator against the emulator and a real PostgreSQL; what each
agent would receive is read from the store's desired-state query, the one the
agent API answers with.
"""

from __future__ import annotations

import pytest

from .builders import configmap
from .operator_harness import AGENT_TARGETS, AGENTS, STACKS, eventually

DEADLINE = 3.0  # the propagation deadline


def agent(name: str, region: str) -> dict:
    return {"metadata": {"name": name, "labels": {"region": region}}, "spec": {"clusterName": "c1"}}


async def holding(store, names) -> set[str]:
    """The agents among `names` whose desired state holds the Stack `default/web`."""
    found = set()
    for name in names:
        if any(s.stack_name == "default/web" for s in await store.desired_state(name, "c1")):
            found.add(name)
    return found


@pytest.fixture
def names() -> list[str]:
    return [f"a{i:02d}" for i in range(20)]


async def test_a_selector_ships_to_exactly_the_matching_agents_and_follows_them(operator, cluster, store, names):
    for index, name in enumerate(names):
        await cluster.create(AGENTS, agent(name, "eu" if index < 8 else "us"))
    for name in names:
        await cluster.wait_condition(AGENTS, name, "Ready", "True")
    await cluster.create(STACKS, {"metadata": {"name": "web"}, "spec": {"resources": [configmap("a")]}})
    await cluster.create(AGENT_TARGETS, {"metadata": {"name": "web-eu"}, "spec": {
        "stackRef": {"name": "web"}, "agentSelector": {"matchLabels": {"region": "eu"}}}})
    ready = await cluster.wait_condition(AGENT_TARGETS, "web-eu", "Ready", "True")
    assert ready["status"]["selectedAgents"] == 8
    assert {entry["agentName"] for entry in ready["status"]["agents"]} == set(names[:8])
    assert await holding(store, names) == set(names[:8])

    async def holders_are(expected: set[str]):
        async def check():
            return await holding(store, names + ["a20"]) == expected

        await eventually(check, timeout=DEADLINE)

    # relabel one: it leaves
    await cluster.patch(AGENTS, "a00", {"metadata": {"labels": {"region": "us"}}})
    await holders_are(set(names[1:8]))
    # delete one: it leaves
    await cluster.delete(AGENTS, "a01")
    await holders_are(set(names[2:8]))
    # add one: it joins
    await cluster.create(AGENTS, agent("a20", "eu"))
    await holders_are(set(names[2:8]) | {"a20"})

    async def counted():
        status = (await cluster.get(AGENT_TARGETS, "web-eu"))["status"]
        return status["selectedAgents"] == 7

    await eventually(counted, timeout=DEADLINE)


async def test_a_name_and_a_selector_picking_the_same_agent_share_one_row(operator, cluster, store, db):
    await cluster.create(AGENTS, agent("edge", "eu"))
    await cluster.create(STACKS, {"metadata": {"name": "web"}, "spec": {"resources": [configmap("a")]}})
    await cluster.create(AGENT_TARGETS, {"metadata": {"name": "by-name"}, "spec": {
        "stackRef": {"name": "web"}, "agentName": "edge", "clusterName": "c1"}})
    await cluster.create(AGENT_TARGETS, {"metadata": {"name": "by-selector"}, "spec": {
        "stackRef": {"name": "web"}, "agentSelector": {"matchExpressions": [
            {"key": "region", "operator": "In", "values": ["eu", "us"]}]}}})
    await cluster.wait_condition(AGENT_TARGETS, "by-name", "Ready", "True")
    await cluster.wait_condition(AGENT_TARGETS, "by-selector", "Ready", "True")
    assert db.execute("SELECT count(*) FROM agent_targets").fetchone()[0] == 1

    (owner_uid,) = db.execute("SELECT a.value FROM annotations a JOIN agent_targets t ON t.id = a.external_object_id"
                              " WHERE a.key = 'stackyard.dev/owner-uid'").fetchone()
    uids = {name: (await cluster.get(AGENT_TARGETS, name))["metadata"]["uid"] for name in ("by-name", "by-selector")}
    gone = next(name for name, uid in uids.items() if uid == owner_uid)  # delete the one whose row it is
    kept = next(name for name in uids if name != gone)
    await cluster.delete(AGENT_TARGETS, gone)
    await cluster.wait_gone(AGENT_TARGETS, gone)

    async def still_bound():
        rows = db.execute("SELECT count(*) FROM agent_targets").fetchone()[0]
        return rows == 1 and await holding(store, ["edge"]) == {"edge"}

    await eventually(still_bound, timeout=DEADLINE)
    ready = await cluster.wait_condition(AGENT_TARGETS, kept, "Ready", "True")
    assert ready["status"]["selectedAgents"] == 1
