"""The cost of an idle agent: it long-polls with If-None-Match and touches its cluster only once per poll.

Both clusters are kmock emulators (no Kubernetes can run here); the operator,
the API, PostgreSQL and the agent are real. A test that only waited for
convergence would pass with an agent polling in a hot loop, so this one
counts requests.
"""

from __future__ import annotations

import asyncio

import pytest

from .api_harness import running_api
from .loop_harness import configmap, setup_loop, start_agent, target_cluster, wait_applied

WINDOW = 10.0
POLL_WAIT = 4


def _count(api, route: str, code: str | None = None) -> float:
    total = 0.0
    for metric in api.metrics.registry.collect():
        if metric.name != "stackyard_api_requests":
            continue
        for sample in metric.samples:
            if sample.name.endswith("_total") and sample.labels["route"] == route and code in (None, sample.labels["code"]):
                total += sample.value
    return total


@pytest.fixture
async def api(db_url, operator):
    async with running_api(db_url) as running:
        yield running


async def test_idle_agent_long_polls_and_leaves_its_cluster_alone(api, cluster, tmp_path):
    async with target_cluster() as (target_server, _view):
        pak_file = await setup_loop(cluster, [configmap("a")], tmp_path)
        agent = await start_agent(api.url, pak_file, target_server, poll_wait=POLL_WAIT, heartbeat_interval=5.0)
        try:
            await wait_applied(cluster, "web")
            await asyncio.sleep(1.0)  # let the events of the first apply go out before counting
            route = "/api/v1/agents/self/target-state"
            states, not_modified = _count(api, route), _count(api, route, "304")
            cluster_requests = target_server.emulator.count()
            await asyncio.sleep(WINDOW)  # the window being measured, not a wait for a condition
            polls = _count(api, route) - states
            unchanged = _count(api, route, "304") - not_modified
            touched = target_server.emulator.count() - cluster_requests
        finally:
            await agent.stop()
    most = WINDOW / POLL_WAIT + 1
    assert 1 <= polls <= most, f"{polls} target-state requests in {WINDOW}s (a long-poll of {POLL_WAIT}s allows {most})"
    assert unchanged == polls, "every idle poll is answered 304: the agent sends If-None-Match"
    assert touched <= most, f"{touched} requests to the target cluster in {WINDOW}s"
