"""Reconcile throughput: N Stacks (5 resources each) until all are Ready with their deployment object stored.

    python bench/reconcile.py [--stacks 1000]

Runs `stackyard run` as a separate process against the kmock emulator (or the
cluster of KUBECONFIG when set) and a real PostgreSQL. Prints seconds, Stacks
per second and the operator's peak RSS. Target: >= 100 Stacks/s on 2 cores.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path

import psycopg

from common import PeakRss, database, free_port, kubeconfig, machine, prepare_cluster, progress, stackyard_process

from stackyard.kube import Kube, load_configuration, url_configuration  # noqa: E402


def stack(i: int) -> dict:
    return {"apiVersion": "stackyard.dev/v1alpha1", "kind": "Stack",
            "metadata": {"name": f"bench-{i:05d}", "namespace": "bench"},
            "spec": {"resources": [{"apiVersion": "v1", "kind": "ConfigMap",
                                    "metadata": {"name": f"cm-{i}-{j}", "namespace": "apps"},
                                    "data": {"index": str(i), "part": str(j)}} for j in range(5)]}}


async def run(count: int) -> None:
    from tests.emulator import KubeServer

    kube_server = None
    if os.environ.get("KUBECONFIG"):
        server_url = None
    else:
        kube_server = KubeServer().start()
        server_url = kube_server.url
    with database() as url, tempfile.TemporaryDirectory() as tmp:
        env = {"STACKYARD_DATABASE_URL": url, "STACKYARD_LOG_LEVEL": "WARNING"}
        if server_url:
            env["KUBECONFIG"] = str(kubeconfig(Path(tmp) / "kubeconfig", server_url))
        else:
            env["KUBECONFIG"] = os.environ["KUBECONFIG"]
        proc = stackyard_process("run", "--metrics-address", f"127.0.0.1:{free_port()}",
                                 "--health-address", f"127.0.0.1:{free_port()}",
                                 "--api-address", f"127.0.0.1:{free_port()}", env=env)
        rss = PeakRss(proc.pid)
        # The cluster the operator runs against, with the same credentials (the kubeconfig's, when set).
        client = Kube(url_configuration(server_url) if server_url else load_configuration(), user_agent="stackyard-bench",
                      workers=16)
        try:
            await prepare_cluster(client, "bench")
            await asyncio.sleep(2)  # let the operator start its watches
            progress(f"creating {count} Stacks")
            started = time.monotonic()
            semaphore = asyncio.Semaphore(32)

            async def create(i: int) -> None:
                async with semaphore:
                    await client.create(stack(i))

            await asyncio.gather(*(create(i) for i in range(count)))
            created = time.monotonic() - started
            progress(f"created in {created:.1f}s; waiting for Ready")
            with psycopg.connect(url, autocommit=True) as conn:
                last = -1
                while True:
                    rss.sample()
                    stored = conn.execute("SELECT count(*) FROM deployment_objects").fetchone()[0]
                    listing = await client.list("stackyard.dev/v1alpha1", "Stack", "bench")
                    ready = sum(1 for item in listing if any(
                        c.get("type") == "Ready" and c.get("status") == "True"
                        for c in (item.get("status") or {}).get("conditions", [])))
                    if ready != last:
                        progress(f"{ready}/{count} Ready, {stored} deployment objects stored")
                        last = ready
                    if ready >= count and stored >= count:
                        break
                    if proc.poll() is not None:
                        raise RuntimeError(f"the operator exited: {proc.stderr.read()[-2000:]}")
                    await asyncio.sleep(0.5)
            elapsed = time.monotonic() - started
            cpu = rss.process.cpu_times()
            bench_cpu = time.process_time()
        finally:
            proc.terminate()
            proc.wait(timeout=60)
            await client.close()
            if kube_server:
                kube_server.stop()
    print(f"machine: {machine()}")
    print(f"stacks: {count} (5 resources each)")
    print(f"seconds until all Ready and stored: {elapsed:.1f}")
    print(f"stacks per second: {count / elapsed:.1f}")
    print(f"operator peak RSS: {rss.peak / 2**20:.0f} MiB")
    print(f"operator CPU seconds: {cpu.user + cpu.system:.1f}; emulator+bench CPU seconds: {bench_cpu:.1f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stacks", type=int, default=1000)
    asyncio.run(run(parser.parse_args().stacks))
