"""Propagation latency: a Stack change until the agent applied it and the Stack status shows Applied.

    python bench/propagation.py [--changes 100]

Management and target clusters are kmock emulators; the operator (Kopf), the
agent API, the agent and PostgreSQL are real, in one process with the operator
in its own thread, with the agent's production settings (30 s long-poll,
10 s heartbeats). Prints p50 and p95 over the changes, the agent's
target-state requests per change and how many were 304 (proof that the
long-poll with If-None-Match is the path measured, not a polling loop), and the
idle cost: requests per minute of an agent with nothing to do. Target: p95 < 0.5 s.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import kopf

from common import database, machine, percentile, progress

from tests.api_harness import running_api  # noqa: E402
from tests.emulator import KubeServer  # noqa: E402
from tests.kubectl import KubeClient  # noqa: E402
from tests.loop_harness import configmap, setup_loop, start_agent, target_cluster, wait_applied  # noqa: E402
from tests.operator_harness import STACKS, Cluster, OperatorThread, operator_config  # noqa: E402

IDLE_SECONDS = 60.0


async def run(changes: int) -> None:
    with database() as url, tempfile.TemporaryDirectory() as tmp:
        kube = KubeServer().start()
        operator = OperatorThread(kube, operator_config(url, kube, resync_interval=30.0)).start()
        client = KubeClient(kopf.ConnectionInfo(server=kube.url, insecure=True))
        cluster = Cluster(client)
        latencies = []
        try:
            async with running_api(url) as api, target_cluster() as (target_server, target_view):
                pak_file = await setup_loop(cluster, [configmap("a", {"v": "0"})], Path(tmp))
                agent = await start_agent(api.url, pak_file, target_server, poll_wait=30, heartbeat_interval=10.0)
                try:
                    await wait_applied(cluster, "web", timeout=30)
                    progress(f"measuring {changes} changes")
                    polls_before, not_modified_before = state_requests(api)
                    for i in range(1, changes + 1):
                        started = time.perf_counter()
                        await cluster.patch(STACKS, "web", {"spec": {"resources": [configmap("a", {"v": str(i)})]}})
                        await wait_applied(cluster, "web", timeout=30)
                        latencies.append(time.perf_counter() - started)
                        data = (await target_view.configmaps())["a"]["data"]
                        assert data == {"v": str(i)}, data
                        if i % 20 == 0:
                            progress(f"{i}/{changes}: p50 so far {percentile(latencies, 50) * 1000:.0f} ms")
                    polls, not_modified = state_requests(api)
                    polls, not_modified = polls - polls_before, not_modified - not_modified_before
                    progress(f"measuring the idle agent for {IDLE_SECONDS:.0f} s")
                    await asyncio.sleep(2)
                    idle_api = sum(api_requests(api).values())
                    idle_polls = state_requests(api)
                    idle_cluster = target_server.emulator.count()
                    cpu_before = time.process_time()
                    await asyncio.sleep(IDLE_SECONDS)
                    idle_cpu = time.process_time() - cpu_before
                    idle_api = sum(api_requests(api).values()) - idle_api
                    idle_polls = tuple(now - then for now, then in zip(state_requests(api), idle_polls))
                    idle_cluster = target_server.emulator.count() - idle_cluster
                finally:
                    await agent.stop()
        finally:
            await client.close()
            operator.stop()
            kube.stop()
    print(f"machine: {machine()}")
    print(f"changes: {changes}")
    print(f"p50: {percentile(latencies, 50) * 1000:.0f} ms")
    print(f"p95: {percentile(latencies, 95) * 1000:.0f} ms")
    print(f"max: {max(latencies) * 1000:.0f} ms")
    print(f"target-state requests per change: {polls / changes:.2f} ({not_modified:.0f} of {polls:.0f} answered 304)")
    per_minute = 60 / IDLE_SECONDS
    print(f"idle agent: {idle_api * per_minute:.1f} API requests/min, {idle_cluster * per_minute:.1f} cluster requests/min,"
          f" {idle_cpu / IDLE_SECONDS * 100:.1f}% of a core for the whole process (operator, API, agent, emulators)")
    print(f"idle target-state polls: {idle_polls[0]:.0f} in {IDLE_SECONDS:.0f} s, {idle_polls[1]:.0f} answered 304")


def api_requests(api) -> dict[tuple[str, str], float]:
    """API requests served so far by (route, code)."""
    found: dict[tuple[str, str], float] = {}
    for metric in api.metrics.registry.collect():
        if metric.name == "stackyard_api_requests":
            for sample in metric.samples:
                if sample.name.endswith("_total"):
                    key = (sample.labels["route"], sample.labels["code"])
                    found[key] = found.get(key, 0.0) + sample.value
    return found


def state_requests(api) -> tuple[float, float]:
    """(target-state requests, of which 304) so far."""
    counts = {code: n for (route, code), n in api_requests(api).items() if route.endswith("/target-state")}
    return sum(counts.values()), counts.get("304", 0.0)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--changes", type=int, default=100)
    asyncio.run(run(parser.parse_args().changes))
