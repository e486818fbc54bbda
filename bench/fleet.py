"""Fleet simulation: `stackyard api` processes serving 10,000 simulated agents that each hold a long-poll.

    python bench/fleet.py [--agents 10000] [--stacks 10000] [--versions 10] [--targeted 1000] [--processes 1,2]

The store holds `stacks` x `versions` deployment objects (100,000 by default);
every agent targets 3 stacks, and the first `targeted` agents also target one
shared Stack. Each simulated agent holds the real long-poll (If-None-Match,
wait=55) against one API process (agent i on process i mod N). Then the shared
Stack gets a new version, as the operator writes it, and the benchmark reports
the time until every targeted agent received it (p50, p95, max), each API
process's RSS and open file descriptors, and the PostgreSQL statements the
change caused (pg_stat_statements). Runs once per process count in
`--processes`. Finally the desired-state query of a targeted agent at that size,
with EXPLAIN ANALYZE (target: under 5 ms). Bounded: every wait has a deadline.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import resource
import time
import uuid

import aiohttp
import psutil
import psycopg

from common import database, free_port, machine, percentile, progress, stackyard_process, wait_ready

from stackyard import pak  # noqa: E402
from stackyard.store import DESIRED_STATE_SQL  # noqa: E402

SHARED = "fleet/shared"
WAIT = 55
RAMP_PER_SECOND = 500
CONTENT = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n  namespace: apps\ndata:\n  k: v\n"


def raise_file_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else 1 << 20
    resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    return wanted


def seed(url: str, agents: int, stacks: int, versions: int, targeted: int) -> tuple[list[str], uuid.UUID]:
    """Rows straight into PostgreSQL (COPY); returns every agent's token and the shared stack's id."""
    progress(f"seeding {agents} agents, {stacks} stacks x {versions} versions, {targeted} agents on {SHARED}")
    keys = [pak.generate() for _ in range(agents)]
    rng = random.Random(11)
    stack_ids = [uuid.uuid4() for _ in range(stacks)]
    shared = uuid.uuid4()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        with conn.cursor() as cur:
            with cur.copy("COPY agents (id, name, cluster_name, pak_hash, pak_key_id) FROM STDIN") as copy:
                for i, key in enumerate(keys):
                    copy.write_row((uuid.uuid4(), f"agent-{i}", "c1", key.secret_hash, key.key_id))
            with cur.copy("COPY stacks (id, name) FROM STDIN") as copy:
                for i, stack_id in enumerate(stack_ids):
                    copy.write_row((stack_id, f"fleet/stack-{i}"))
                copy.write_row((shared, SHARED))
            progress(f"seeding {stacks * versions + 1} deployment objects")
            with cur.copy("COPY deployment_objects (stack_id, yaml_content, yaml_checksum) FROM STDIN") as copy:
                for version in range(versions):
                    for stack_id in stack_ids:
                        text = f"{CONTENT}  version: '{version}'\n  stack: {stack_id}\n"
                        copy.write_row((stack_id, text, pak.hash_secret(text)))
                copy.write_row((shared, CONTENT, pak.hash_secret(CONTENT)))
            with cur.copy("COPY agent_targets (id, stack_id, agent_name, cluster_name, namespace) FROM STDIN") as copy:
                for i in range(agents):
                    for stack_id in rng.sample(stack_ids, 3):
                        copy.write_row((uuid.uuid4(), stack_id, f"agent-{i}", "c1", "fleet"))
                    if i < targeted:
                        copy.write_row((uuid.uuid4(), shared, f"agent-{i}", "c1", "fleet"))
        conn.execute("ANALYZE")
    return [key.token for key in keys], shared


class Fleet:
    """The simulated agents: one long-poll loop each, recording when the shared Stack's new version arrived."""

    def __init__(self, tokens: list[str], bases: list[str], targeted: int):
        self.tokens, self.bases, self.targeted = tokens, bases, targeted
        self.etags: dict[int, str] = {}
        self.polling = 0
        self.seen: dict[int, tuple[int, float]] = {}  # agent -> (shared Stack's sequence, when it arrived)
        self.errors = 0
        self.last_error = ""

    async def agent(self, http: aiohttp.ClientSession, i: int) -> None:
        await asyncio.sleep(i / RAMP_PER_SECOND)  # agents come up over time, not as one herd
        url = f"{self.bases[i % len(self.bases)]}/api/v1/agents/self/target-state"
        auth = {"Authorization": f"Bearer {self.tokens[i]}"}
        while True:
            headers = {**auth, **({"If-None-Match": self.etags[i]} if i in self.etags else {})}
            polling = i in self.etags
            self.polling += polling
            try:
                async with http.get(url, params={"wait": str(WAIT)} if polling else None, headers=headers,
                                    timeout=aiohttp.ClientTimeout(total=WAIT + 30)) as response:
                    if response.status == 200:
                        document = await response.json()
                        self.etags[i] = response.headers["ETag"]
                        self.note(i, document)
                    elif response.status != 304:
                        self.errors += 1
                        self.last_error = f"HTTP {response.status}: {(await response.text())[:200]}"
                        await asyncio.sleep(random.uniform(1, 5))  # as the agent: jittered backoff
            except (aiohttp.ClientError, TimeoutError) as exc:
                self.errors += 1
                self.last_error = repr(exc)
                await asyncio.sleep(random.uniform(1, 5))
            finally:
                self.polling -= polling

    def note(self, i: int, document: dict) -> None:
        for stack in document["stacks"]:
            if stack["stackName"] == SHARED:
                self.seen[i] = (stack["deploymentObject"]["sequenceId"], time.monotonic())

    def arrived(self, version: int) -> list[float]:
        return [at for sequence, at in self.seen.values() if sequence >= version]


def statements(url: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        return int(conn.execute("SELECT coalesce(sum(calls), 0) FROM pg_stat_statements"
                                " WHERE query NOT ILIKE '%pg_stat_statements%'").fetchone()[0])


async def wait_until(check, deadline: float, what: str, status=None) -> None:
    started = last = time.monotonic()
    while not check():
        now = time.monotonic()
        if now - started > deadline:
            raise RuntimeError(f"{what}: not within {deadline:.0f}s ({status() if status else ''})")
        if status is not None and now - last >= 5:
            progress(f"{what}: {status()}")
            last = now
        await asyncio.sleep(0.2)


async def simulate(url: str, tokens: list[str], shared: uuid.UUID, processes: int, targeted: int) -> None:
    ports = [free_port() for _ in range(processes)]
    procs = [stackyard_process("api", "--api-address", f"127.0.0.1:{port}", "--metrics-address",
                               f"127.0.0.1:{free_port()}", "--pool-size", "20",
                               env={"STACKYARD_DATABASE_URL": url, "STACKYARD_LOG_LEVEL": "WARNING"})
             for port in ports]
    fleet = Fleet(tokens, [f"http://127.0.0.1:{port}" for port in ports], targeted)
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=0)
    tasks: list[asyncio.Task] = []
    try:
        async with aiohttp.ClientSession(connector=connector) as http:
            for port in ports:
                await wait_ready(http, f"http://127.0.0.1:{port}/readyz")
            progress(f"{len(tokens)} agents fetch their state and start long-polling ({processes} API processes)")
            tasks += [asyncio.create_task(fleet.agent(http, i)) for i in range(len(tokens))]
            await wait_until(lambda: fleet.polling >= len(tokens), 120, "every agent holding a long-poll",
                             lambda: f"{fleet.polling} polling, {len(fleet.etags)} with a state, {fleet.errors} errors"
                                           f" {fleet.last_error}")
            await asyncio.sleep(1)
            usage = [(psutil.Process(p.pid).memory_info().rss, psutil.Process(p.pid).num_fds()) for p in procs]
            before = statements(url)
            with psycopg.connect(url, autocommit=True) as conn:
                text = CONTENT + f"  changed: '{processes}'\n"
                changed_at = time.monotonic()
                row = conn.execute("INSERT INTO deployment_objects (stack_id, yaml_content, yaml_checksum)"
                                   " VALUES (%s, %s, %s) RETURNING sequence_id", (shared, text, pak.hash_secret(text)))
                version = row.fetchone()[0]
            progress(f"new version {version} of {SHARED}; waiting for {targeted} agents")
            await wait_until(lambda: len(fleet.arrived(version)) >= targeted, 120, "every targeted agent receiving it")
            await asyncio.sleep(1)  # statements of the last answers
            caused = statements(url) - before
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for proc in procs:
            proc.kill()
            proc.wait(timeout=30)
    delays = [at - changed_at for at in fleet.arrived(version)]
    print(f"{processes} API process(es), {len(tokens)} agents long-polling, {targeted} targeted by the change:")
    print(f"  new version received: p50 {percentile(delays, 50) * 1000:.0f} ms, p95 {percentile(delays, 95) * 1000:.0f} ms,"
          f" max {max(delays) * 1000:.0f} ms")
    for n, (rss, fds) in enumerate(usage):
        print(f"  API process {n + 1}: RSS {rss / 2**20:.0f} MiB, open file descriptors {fds}")
    print(f"  PostgreSQL statements caused by the change: {caused} ({caused / targeted:.1f} per targeted agent);"
          f" client errors: {fleet.errors}")


def explain(url: str) -> float:
    """Execution time (ms) of the desired-state query of a targeted agent, best of 5."""
    with psycopg.connect(url, autocommit=True) as conn:
        times = []
        for _ in range(5):
            plan = conn.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + DESIRED_STATE_SQL, ("agent-0", "c1")).fetchone()[0]
            plan = json.loads(plan) if isinstance(plan, str) else plan
            times.append(float(plan[0]["Execution Time"]))
        return min(times)


async def run(agents: int, stacks: int, versions: int, targeted: int, process_counts: list[int]) -> None:
    limit = raise_file_limit()
    with database(shared_preload_libraries="pg_stat_statements", max_connections="300") as url:
        tokens, shared = seed(url, agents, stacks, versions, targeted)
        print(f"machine: {machine()}; open file limit {limit}")
        print(f"store: {agents} agents, {stacks * versions + 1} deployment objects, {agents * 3 + targeted} targets")
        for processes in process_counts:
            await simulate(url, tokens, shared, processes, targeted)
        print(f"desired-state query of a targeted agent (EXPLAIN ANALYZE, best of 5): {explain(url):.2f} ms"
              " (target < 5 ms)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", type=int, default=10000)
    parser.add_argument("--stacks", type=int, default=10000)
    parser.add_argument("--versions", type=int, default=10)
    parser.add_argument("--targeted", type=int, default=1000)
    parser.add_argument("--processes", default="1,2")
    arguments = parser.parse_args()
    asyncio.run(run(arguments.agents, arguments.stacks, arguments.versions, arguments.targeted,
                    [int(n) for n in arguments.processes.split(",")]))
