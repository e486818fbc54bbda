"""PostgreSQL restarted in the middle of the loop: 503 meanwhile, nothing lost, convergence afterwards."""

from __future__ import annotations

import asyncio
import contextlib

import aiohttp
import psycopg
import pytest

from stackyard.config import OperatorConfig
from stackyard.metrics import Metrics
from stackyard.serve import MAINTENANCE_DEADLINE, ROUND_TRIP_DEADLINE, agents_gauge_loop
from stackyard.store import Store, migrate
from stackyard.store.embedded import EmbeddedPostgres
from stackyard.store.location import ensure_database

from .api_harness import running_api
from .netfault import frozen
from .loop_harness import configmap, setup_loop, start_agent, target_cluster, wait_applied
from .operator_harness import STACKS, OperatorThread, condition, eventually, operator_config


@pytest.fixture
def own_postgres(tmp_path):
    """A PostgreSQL server of this test's own, so it can be stopped without disturbing other tests."""
    server = EmbeddedPostgres(tmp_path / "pg", settings={"fsync": "off"})
    server.start()
    ensure_database(server.url(), "stackyard")
    migrate(server.url("stackyard"))
    try:
        yield server
    finally:
        server.stop(mode="immediate")


async def test_database_restart_during_the_loop(own_postgres, kube_server, cluster, tmp_path):
    url = own_postgres.url("stackyard")
    operator = OperatorThread(kube_server, operator_config(url, kube_server)).start()
    try:
        async with running_api(url) as api, target_cluster() as (target_server, target_view):
            pak_file = await setup_loop(cluster, [configmap("a", {"v": "1"})], tmp_path)
            token = pak_file.read_text()
            agent = await start_agent(api.url, pak_file, target_server)
            try:
                await wait_applied(cluster, "web")
                own_postgres.stop()

                async with aiohttp.ClientSession() as http:
                    async with http.get(f"{api.url}/readyz") as response:
                        assert response.status == 503
                        assert (await response.json())["code"] == "unavailable"
                    async with http.get(f"{api.url}/api/v1/agents/self/target-state",
                                        headers={"Authorization": f"Bearer {token}"}) as response:
                        assert response.status == 503

                # a change made while the database is down is not lost
                await cluster.patch(STACKS, "web", {"spec": {"resources": [configmap("a", {"v": "2"})]}})

                async def retrying():
                    cond = condition(await cluster.get(STACKS, "web"), "Reconciling")
                    return cond is not None and cond["reason"] == "DatabaseUnavailable"

                await eventually(retrying, timeout=20)
                own_postgres.start()

                stack = await wait_applied(cluster, "web", timeout=60)
                assert (await target_view.configmaps())["a"]["data"] == {"v": "2"}
                assert condition(stack, "Reconciling") is None
                with psycopg.connect(url) as conn:
                    assert conn.execute("SELECT count(*) FROM deployment_objects").fetchone()[0] == 2
                    assert conn.execute("SELECT count(*) FROM agent_events WHERE status = 'SUCCESS'").fetchone()[0] >= 2
            finally:
                await agent.stop()
    finally:
        operator.stop()


async def test_the_database_up_gauge_follows_the_operators_round_trips(own_postgres):
    """`stackyard_database_up` (alert StackyardDatabaseUnreachable) drops to 0 while PostgreSQL hangs or is
    down, and returns to 1 without a restart. The store's own deadline is the maintenance one (minutes), so
    only the gauges' round-trip deadline can report a hung server in time."""
    url = own_postgres.url("stackyard")
    config = OperatorConfig(database_url=url, heartbeat_interval=0.2)
    metrics = Metrics()
    store = await Store.open(url, min_size=1, max_size=2, timeout=1.0, deadline=MAINTENANCE_DEADLINE)
    loop = asyncio.create_task(agents_gauge_loop(store, config, metrics))

    def up(expected: float):
        async def check() -> bool:
            return metrics.registry.get_sample_value("stackyard_database_up") == expected
        return check

    try:
        await eventually(up(1.0))
        with frozen(own_postgres.running_info().pid):  # hung, not refusing: connections stay open and silent
            await eventually(up(0.0), timeout=ROUND_TRIP_DEADLINE + 5)
        await eventually(up(1.0), timeout=30)
        own_postgres.stop()
        await eventually(up(0.0), timeout=20)
        own_postgres.start()
        await eventually(up(1.0), timeout=30)
        assert not metrics.registry.get_sample_value("stackyard_task_errors_total", {"task": "agent-gauges"})
    finally:
        loop.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await loop
        await store.close()
