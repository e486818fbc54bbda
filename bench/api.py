"""Agent API throughput: 1,000 agents, 2,000 stacks, 10 targets per agent, one `stackyard api` process.

    python bench/api.py [--agents 1000] [--stacks 2000] [--seconds 10] [--concurrency 32]

Measures target-state requests/s with p50/p99 latency for full answers and for
304s, heartbeats/s and events/s. Target: >= 2,000 304-answers/s with p99 < 20 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
import uuid

import aiohttp
import psycopg

from common import database, free_port, machine, percentile, progress, stackyard_process

from stackyard import pak  # noqa: E402


def seed(url: str, agents: int, stacks: int, targets_per_agent: int) -> list[tuple[str, list[str]]]:
    """Rows straight into PostgreSQL; returns (token, deployment object ids) per agent."""
    progress(f"seeding {agents} agents, {stacks} stacks, {targets_per_agent} targets per agent")
    keys = [pak.generate() for _ in range(agents)]
    with psycopg.connect(url, autocommit=True) as conn:
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO agents (id, name, cluster_name, pak_hash) VALUES (%s, %s, 'c1', %s)",
                            [(uuid.uuid4(), f"agent-{i}", keys[i].secret_hash) for i in range(agents)])
            stack_ids = [uuid.uuid4() for _ in range(stacks)]
            cur.executemany("INSERT INTO stacks (id, name) VALUES (%s, %s)",
                            [(sid, f"bench/stack-{i}") for i, sid in enumerate(stack_ids)])
            content = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\ndata:\n  k: v\n" * 5
            cur.executemany("INSERT INTO deployment_objects (stack_id, yaml_content, yaml_checksum) VALUES (%s, %s, %s)",
                            [(sid, content + str(sid), pak.hash_secret(str(sid))) for sid in stack_ids])
            rng = random.Random(7)
            rows = []
            for i in range(agents):
                for sid in rng.sample(stack_ids, targets_per_agent):
                    rows.append((uuid.uuid4(), sid, f"agent-{i}"))
            cur.executemany("INSERT INTO agent_targets (id, stack_id, agent_name, cluster_name) VALUES (%s, %s, %s, 'c1')",
                            rows)
        conn.execute("ANALYZE")
        dos = {}
        for name, do_id in conn.execute(
            "SELECT t.agent_name, d.id FROM agent_targets t JOIN deployment_objects d ON d.stack_id = t.stack_id"
        ):
            dos.setdefault(name, []).append(str(do_id))
    return [(keys[i].token, dos[f"agent-{i}"]) for i in range(agents)]


async def hammer(name: str, seconds: float, concurrency: int, call) -> tuple[int, list[float]]:
    latencies: list[float] = []
    deadline = time.monotonic() + seconds

    async def worker(n: int) -> None:
        i = n
        while time.monotonic() < deadline:
            started = time.perf_counter()
            await call(i)
            latencies.append(time.perf_counter() - started)
            i += concurrency

    await asyncio.gather(*(worker(n) for n in range(concurrency)))
    return len(latencies), latencies


def report(name: str, count: int, seconds: float, latencies: list[float]) -> None:
    print(f"{name}: {count / seconds:.0f}/s, p50 {percentile(latencies, 50) * 1000:.1f} ms, "
          f"p99 {percentile(latencies, 99) * 1000:.1f} ms ({count} requests)")


async def run(agents: int, stacks: int, seconds: float, concurrency: int) -> None:
    with database() as url:
        creds = seed(url, agents, stacks, 10)
        port = free_port()
        proc = stackyard_process("api", "--api-address", f"127.0.0.1:{port}", "--metrics-address",
                                 f"127.0.0.1:{free_port()}", "--pool-size", "20",
                                 env={"STACKYARD_DATABASE_URL": url, "STACKYARD_LOG_LEVEL": "WARNING"})
        base = f"http://127.0.0.1:{port}/api/v1/agents/self"
        try:
            connector = aiohttp.TCPConnector(limit=concurrency)
            async with aiohttp.ClientSession(connector=connector) as http:
                for _ in range(100):
                    try:
                        async with http.get(f"http://127.0.0.1:{port}/readyz") as r:
                            if r.status == 200:
                                break
                    except aiohttp.ClientError:
                        pass
                    await asyncio.sleep(0.1)
                etags: dict[int, str] = {}
                for i, (token, _) in enumerate(creds):
                    async with http.get(f"{base}/target-state", headers={"Authorization": f"Bearer {token}"}) as r:
                        await r.read()
                        etags[i] = r.headers["ETag"]

                def auth(i: int) -> dict[str, str]:
                    return {"Authorization": f"Bearer {creds[i % agents][0]}"}

                async def full(i: int) -> None:
                    async with http.get(f"{base}/target-state", headers=auth(i)) as r:
                        assert r.status == 200
                        await r.read()

                async def not_modified(i: int) -> None:
                    headers = {**auth(i), "If-None-Match": etags[i % agents]}
                    async with http.get(f"{base}/target-state", headers=headers) as r:
                        assert r.status == 304, r.status

                async def heartbeat(i: int) -> None:
                    async with http.post(f"{base}/heartbeat", headers=auth(i)) as r:
                        assert r.status == 200

                async def events(i: int) -> None:
                    do_id = creds[i % agents][1][0]
                    body = {"events": [{"deploymentObjectId": do_id, "eventType": "APPLY", "status": "SUCCESS"}]}
                    async with http.post(f"{base}/events", headers=auth(i), json=body) as r:
                        assert r.status == 200

                print(f"machine: {machine()}")
                print(f"agents: {agents}, stacks: {stacks}, targets per agent: 10, concurrency: {concurrency}")
                for name, call in (("target-state 200 (full)", full), ("target-state 304", not_modified),
                                   ("heartbeats", heartbeat), ("events (1 per request)", events)):
                    progress(f"measuring {name} for {seconds:.0f}s")
                    count, latencies = await hammer(name, seconds, concurrency, call)
                    report(name, count, seconds, latencies)
        finally:
            proc.terminate()
            proc.wait(timeout=30)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", type=int, default=1000)
    parser.add_argument("--stacks", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    asyncio.run(run(args.agents, args.stacks, args.seconds, args.concurrency))
