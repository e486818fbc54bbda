"""Propagation latency: a Stack change until the agent applied it and the Stack status shows Applied.

    python bench/propagation.py [--changes 100]

Management and target clusters are kmock emulators; the operator (Kopf), the
agent API, the agent and PostgreSQL are real, in one process with the operator
in its own thread. Prints p50 and p95 over the changes. Target: p95 < 1 s.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import kopf

from common import database, machine, percentile, progress

from stackyard.kube import KubeClient  # noqa: E402
from tests.api_harness import running_api  # noqa: E402
from tests.kube import KubeServer  # noqa: E402
from tests.loop_harness import configmap, setup_loop, start_agent, target_cluster, wait_applied  # noqa: E402
from tests.operator_harness import STACKS, Cluster, OperatorThread, operator_config  # noqa: E402


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
                agent = await start_agent(api.url, pak_file, target_server, poll_wait=30)
                try:
                    await wait_applied(cluster, "web", timeout=30)
                    progress(f"measuring {changes} changes")
                    for i in range(1, changes + 1):
                        started = time.perf_counter()
                        await cluster.patch(STACKS, "web", {"spec": {"resources": [configmap("a", {"v": str(i)})]}})
                        await wait_applied(cluster, "web", timeout=30)
                        latencies.append(time.perf_counter() - started)
                        data = (await target_view.configmaps())["a"]["data"]
                        assert data == {"v": str(i)}, data
                        if i % 20 == 0:
                            progress(f"{i}/{changes}: p50 so far {percentile(latencies, 50) * 1000:.0f} ms")
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


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--changes", type=int, default=100)
    asyncio.run(run(parser.parse_args().changes))
