"""Reconcile throughput: N Stacks (5 resources each) until all are Ready with their deployment object stored.

    python bench/reconcile.py [--stacks 1000] [--changes 100]

Runs `stackyard run` as a separate process against the kmock emulator (or the
cluster of KUBECONFIG when set) and a real PostgreSQL. Prints seconds, Stacks
per second and the operator's peak RSS. Target: >= 150 Stacks/s on 2 cores,
peak RSS <= 150 MiB.

On the emulator it also counts the operator's writes to Stacks (each one a
watch event for every watcher) and the Events it posts: per new Stack (until
the operator is quiet), per changed Stack (`--changes` spec patches) and per
unchanged resync (two resync intervals with nothing changing). Targets: at most
2 writes per new Stack, 0 per unchanged resync.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import os
import tempfile
import time
from pathlib import Path

import psycopg

from common import (PeakRss, database, free_port, kubeconfig, log_of, machine, prepare_cluster, progress,
                    stackyard_process)

from stackyard.kube import Kube, Ref, load_configuration, url_configuration  # noqa: E402


# A namespace of this run's own: Stacks a run leaves behind (a finalizer outlives an operator that was killed)
# never collide with the next run's, and the run removes its own before it stops the operator.
NAMESPACE = f"stackyard-bench-{secrets.token_hex(3)}"


def stack(i: int) -> dict:
    return {"apiVersion": "stackyard.dev/v1alpha1", "kind": "Stack",
            "metadata": {"name": f"bench-{i:05d}", "namespace": NAMESPACE},
            "spec": {"resources": [{"apiVersion": "v1", "kind": "ConfigMap",
                                    "metadata": {"name": f"cm-{i}-{j}", "namespace": "apps"},
                                    "data": {"index": str(i), "part": str(j)}} for j in range(5)]}}


RESYNC_SECONDS = 10


class Writes:
    """The operator's writes to Stacks and Events as the emulator served them (the benchmark's own subtracted)."""

    def __init__(self, emulator):
        self.emulator = emulator
        self.own = 0

    def stacks(self) -> int:
        return sum(self.emulator.count(m, "/stacks") for m in ("POST", "PATCH", "PUT")) - self.own

    def events(self) -> int:
        return self.emulator.count("POST", "/events")

    async def quiet(self, seconds: float = 3.0) -> tuple[int, int]:
        """Wait until no write arrives for `seconds`; returns (stack writes, events) so far."""
        last, since = (self.stacks(), self.events()), time.monotonic()
        while time.monotonic() - since < seconds:
            await asyncio.sleep(0.5)
            now = (self.stacks(), self.events())
            if now != last:
                last, since = now, time.monotonic()
        return last


async def wait_observed(client, count: int, generation: int) -> None:
    while True:
        listing = await client.list("stackyard.dev/v1alpha1", "Stack", NAMESPACE)
        done = sum(1 for item in listing if (item.get("status") or {}).get("observedGeneration") == generation
                   and item["metadata"]["generation"] == generation)
        if done >= count:
            return
        await asyncio.sleep(0.5)


async def count_writes(client, writes: Writes, count: int, changes: int) -> dict[str, float]:
    """Writes per new Stack, per changed Stack and per unchanged resync."""
    results: dict[str, float] = {}
    new_stacks, new_events = await writes.quiet()
    results["new"], results["new_events"] = new_stacks / count, new_events / count
    progress(f"changing {changes} Stacks")
    for i in range(changes):
        body = stack(i)
        body["spec"]["resources"][0]["data"]["index"] = f"{i}-changed"
        await client.merge_patch(Ref("stackyard.dev/v1alpha1", "Stack", body["metadata"]["name"], NAMESPACE),
                                 {"spec": body["spec"]})
        writes.own += 1
    await wait_observed(client, changes, 2)
    changed_stacks, changed_events = await writes.quiet()
    results["changed"] = (changed_stacks - new_stacks) / changes
    results["changed_events"] = (changed_events - new_events) / changes
    progress(f"watching {2 * RESYNC_SECONDS}s of unchanged resyncs")
    await asyncio.sleep(2 * RESYNC_SECONDS)
    idle_stacks, idle_events = await writes.quiet()
    results["resync"] = (idle_stacks - changed_stacks) / count / 2
    results["resync_events"] = (idle_events - changed_events) / count / 2
    return results


async def clean_up(client: Kube, proc) -> None:
    """Delete this run's Stacks while the operator still runs (it removes their finalizers), then the namespace."""
    if proc.poll() is not None:
        progress(f"the operator is gone: Stacks in namespace {NAMESPACE} keep their finalizer; delete them with"
                 f" the operator running")
        return
    progress(f"deleting the Stacks of namespace {NAMESPACE}")
    listing = await client.list("stackyard.dev/v1alpha1", "Stack", NAMESPACE)
    semaphore = asyncio.Semaphore(32)

    async def delete(name: str) -> None:
        async with semaphore:
            await client.delete(Ref("stackyard.dev/v1alpha1", "Stack", name, NAMESPACE))

    await asyncio.gather(*(delete(item["metadata"]["name"]) for item in listing))
    deadline = time.monotonic() + 120
    while await client.list("stackyard.dev/v1alpha1", "Stack", NAMESPACE) and time.monotonic() < deadline:
        await asyncio.sleep(1)
    await client.delete(Ref("v1", "Namespace", NAMESPACE))


async def run(count: int, changes: int) -> None:
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
                                 "--api-address", f"127.0.0.1:{free_port()}",
                                 "--resync-interval", f"{RESYNC_SECONDS}s", env=env)
        rss = PeakRss(proc.pid)
        # The cluster the operator runs against, with the same credentials (the kubeconfig's, when set).
        client = Kube(url_configuration(server_url) if server_url else load_configuration(), user_agent="stackyard-bench",
                      workers=16)
        try:
            await prepare_cluster(client, NAMESPACE)
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
                    listing = await client.list("stackyard.dev/v1alpha1", "Stack", NAMESPACE)
                    ready = sum(1 for item in listing if any(
                        c.get("type") == "Ready" and c.get("status") == "True"
                        for c in (item.get("status") or {}).get("conditions", [])))
                    if ready != last:
                        progress(f"{ready}/{count} Ready, {stored} deployment objects stored")
                        last = ready
                    if ready >= count and stored >= count:
                        break
                    if proc.poll() is not None:
                        raise RuntimeError(f"the operator exited: {log_of(proc)}")
                    await asyncio.sleep(0.5)
            elapsed = time.monotonic() - started
            cpu = rss.process.cpu_times()
            bench_cpu = time.process_time()
            written = None
            if kube_server is not None:
                writes = Writes(kube_server.emulator)
                writes.own = count
                written = await count_writes(client, writes, count, min(changes, count))
        finally:
            await clean_up(client, proc)
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
    if written is None:
        print("writes per Stack: counted on the emulator only (run without KUBECONFIG)")
    else:
        print(f"writes to Stacks per new Stack: {written['new']:.2f} (target <= 2), Events: {written['new_events']:.2f}")
        print(f"writes to Stacks per changed Stack: {written['changed']:.2f}, Events: {written['changed_events']:.2f}")
        print(f"writes to Stacks per Stack per unchanged resync: {written['resync']:.3f} (target 0),"
              f" Events: {written['resync_events']:.3f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stacks", type=int, default=1000)
    parser.add_argument("--changes", type=int, default=100)
    arguments = parser.parse_args()
    asyncio.run(run(arguments.stacks, arguments.changes))
