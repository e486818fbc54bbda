"""Agent API throughput: 1,000 agents, 2,000 stacks, 10 targets per agent, one `stackyard api` process.

    python bench/api.py [--agents 1000] [--stacks 2000] [--seconds 10] [--concurrency 32]

First wrk (Debian's package; installed with apt-get when missing and the
benchmark runs as root) drives 304s of one agent with 10 stacks at stackyard
and, in the same run, at a bare aiohttp handler answering 304 on the same
machine: both rates, their p99 and the ratio; then the same 304s over TLS at a
second `stackyard api` serving a throwaway certificate (keep-alive
connections: the handshake is paid once per connection). Target: a ratio of at least 0.5,
p99 under 10 ms. Then an aiohttp client measures target-state 200s and 304s
across all agents, heartbeats/s and events/s. With `--secrets` every stack
also holds one Secret of five values sealed at rest, so each 200 opens five
values per stack (50 per answer); the 304 comparisons are skipped (a 304 opens
nothing).

The process runs with its default limits except the heartbeat and event rates
per agent, raised so that the throughput phases measure the server rather than
its limiter (the limits cost nothing on the 304 path: a cached 304 consults no
bucket, which the wrk comparison measures with the defaults in force).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp
import psycopg

from common import database, free_port, machine, percentile, progress, stackyard_process, wait_ready

from stackyard import pak  # noqa: E402
from stackyard.encryption import Keyring, generate_key_file, seal_content  # noqa: E402


CONFIGMAPS = "".join(f"---\napiVersion: v1\ndata:\n  k: v\nkind: ConfigMap\nmetadata:\n  name: c{i}\n" for i in range(5))
SECRET = "---\napiVersion: v1\ndata:\n" + "".join(f"  k{i}: {'c2VjcmV0' * 4}\n" for i in range(5)) + (
    "kind: Secret\nmetadata:\n  name: s\n")


def stack_content(keyring: Keyring | None, stack_id: uuid.UUID) -> tuple[str, str | None]:
    """(stored YAML, key id): five ConfigMaps, and with a keyring one Secret of five values, sealed."""
    content = CONFIGMAPS + f"# {stack_id}\n"
    if keyring is None:
        return content, None
    return seal_content(keyring, content + SECRET), keyring.current_id


def seed(url: str, agents: int, stacks: int, targets_per_agent: int,
         keyring: Keyring | None = None) -> list[tuple[str, list[str]]]:
    """Rows straight into PostgreSQL; returns (token, deployment object ids) per agent."""
    progress(f"seeding {agents} agents, {stacks} stacks, {targets_per_agent} targets per agent"
             + (", each stack with a sealed Secret" if keyring else ""))
    keys = [pak.generate() for _ in range(agents)]
    with psycopg.connect(url, autocommit=True) as conn:
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO agents (id, name, cluster_name, pak_hash) VALUES (%s, %s, 'c1', %s)",
                            [(uuid.uuid4(), f"agent-{i}", keys[i].secret_hash) for i in range(agents)])
            stack_ids = [uuid.uuid4() for _ in range(stacks)]
            cur.executemany("INSERT INTO stacks (id, name) VALUES (%s, %s)",
                            [(sid, f"bench/stack-{i}") for i, sid in enumerate(stack_ids)])
            cur.executemany("INSERT INTO deployment_objects (stack_id, yaml_content, yaml_checksum, key_id)"
                            " VALUES (%s, %s, %s, %s)",
                            [(sid, content, pak.hash_secret(str(sid)), key)
                             for sid in stack_ids for content, key in [stack_content(keyring, sid)]])
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


BARE_304 = """
import sys
from aiohttp import web

async def not_modified(request):
    return web.Response(status=304, headers={"ETag": '"bare"'})

app = web.Application()
app.router.add_get("/", not_modified)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
"""


def ensure_wrk() -> str | None:
    """wrk's path, installing Debian's package when it is missing and we may."""
    found = shutil.which("wrk")
    if found is None and hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get"):
        progress("installing wrk (apt-get install wrk)")
        subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], capture_output=True, timeout=300)
        found = shutil.which("wrk")
    return found


def wrk(binary: str, url: str, headers: dict[str, str], seconds: float, connections: int) -> tuple[float, float]:
    """(requests/s, p99 ms) of wrk against `url`."""
    args = [binary, "-t2", f"-c{connections}", f"-d{max(1, int(seconds))}s", "--latency"]
    for name, value in headers.items():
        args += ["-H", f"{name}: {value}"]
    output = subprocess.run([*args, url], capture_output=True, text=True, timeout=seconds + 60).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))
    value, unit = re.search(r"99%\s+([\d.]+)(us|ms|s)", output).groups()
    return rate, float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


async def compare_with_bare_aiohttp(http: aiohttp.ClientSession, base: str, token: str, etag: str, seconds: float,
                                    connections: int) -> tuple[float, float] | None:
    """stackyard's 304 path against a bare aiohttp 304 handler, both driven by wrk in this run."""
    binary = ensure_wrk()
    if binary is None:
        print("wrk: not installed (apt-get install wrk); the comparison with bare aiohttp is skipped")
        return None
    progress(f"wrk: stackyard 304s for {seconds:.0f}s")
    ours = wrk(binary, f"{base}/target-state", {"Authorization": f"Bearer {token}", "If-None-Match": etag}, seconds,
               connections)
    port = free_port()
    bare = subprocess.Popen([sys.executable, "-c", BARE_304, str(port)])
    try:
        await wait_ready(http, f"http://127.0.0.1:{port}/")
        progress(f"wrk: bare aiohttp 304s for {seconds:.0f}s")
        theirs = wrk(binary, f"http://127.0.0.1:{port}/", {}, seconds, connections)
    finally:
        bare.terminate()
        bare.wait(timeout=10)
    print(f"wrk, {connections} connections, one agent with 10 stacks: stackyard 304 {ours[0]:.0f}/s p99 {ours[1]:.2f} ms;"
          f" bare aiohttp 304 {theirs[0]:.0f}/s p99 {theirs[1]:.2f} ms; ratio {ours[0] / theirs[0]:.2f}"
          " (target >= 0.5, p99 < 10 ms)")
    return ours


async def compare_tls(http: aiohttp.ClientSession, url: str, token: str, etag: str, seconds: float, connections: int,
                      plain: tuple[float, float]) -> None:
    """The same 304s over TLS (a second `stackyard api` with a certificate from a throwaway CA), in this run."""
    import trustme

    binary = ensure_wrk()
    if binary is None:
        return
    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1")
    with tempfile.TemporaryDirectory() as tmp:
        cert, key = os.path.join(tmp, "tls.crt"), os.path.join(tmp, "tls.key")
        leaf.private_key_pem.write_to_path(key)
        with open(cert, "wb") as out:
            out.write(b"".join(p.bytes() for p in leaf.cert_chain_pems))
        port = free_port()
        proc = stackyard_process("api", "--api-address", f"127.0.0.1:{port}", "--metrics-address",
                                 f"127.0.0.1:{free_port()}", "--pool-size", "20", "--tls-cert-file", cert,
                                 "--tls-key-file", key, env={"STACKYARD_DATABASE_URL": url,
                                                             "STACKYARD_LOG_LEVEL": "WARNING"})
        try:
            await wait_ready(http, f"https://127.0.0.1:{port}/readyz")
            progress(f"wrk: stackyard 304s over TLS for {seconds:.0f}s")
            ours = wrk(binary, f"https://127.0.0.1:{port}/api/v1/agents/self/target-state",
                       {"Authorization": f"Bearer {token}", "If-None-Match": etag}, seconds, connections)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    print(f"wrk over TLS (keep-alive, TLS 1.3): stackyard 304 {ours[0]:.0f}/s p99 {ours[1]:.2f} ms; plain HTTP"
          f" {plain[0]:.0f}/s p99 {plain[1]:.2f} ms; TLS/plain {ours[0] / plain[0]:.2f}")


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


async def run(agents: int, stacks: int, seconds: float, concurrency: int, secrets: bool) -> None:
    with database() as url, tempfile.TemporaryDirectory() as scratch:
        key_file = Path(scratch) / "encryption.key"
        generate_key_file(key_file)
        creds = seed(url, agents, stacks, 10, Keyring.from_file(key_file) if secrets else None)
        port = free_port()
        proc = stackyard_process("api", "--api-address", f"127.0.0.1:{port}", "--metrics-address",
                                 f"127.0.0.1:{free_port()}", "--pool-size", "20",
                                 "--api-heartbeats-per-second", "1000000", "--api-heartbeats-burst", "1000000",
                                 "--api-events-per-second", "1000000", "--api-events-burst", "1000000",
                                 env={"STACKYARD_DATABASE_URL": url, "STACKYARD_LOG_LEVEL": "WARNING",
                                      "STACKYARD_ENCRYPTION_KEY_FILE": str(key_file)})
        base = f"http://127.0.0.1:{port}/api/v1/agents/self"
        try:
            connector = aiohttp.TCPConnector(limit=concurrency)
            async with aiohttp.ClientSession(connector=connector) as http:
                await wait_ready(http, f"http://127.0.0.1:{port}/readyz")
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
                print(f"agents: {agents}, stacks: {stacks}, targets per agent: 10, concurrency: {concurrency},"
                      f" stacks with a sealed Secret: {'all' if secrets else 'none'}")
                if not secrets:  # the 304 path never opens content: measured once, without
                    plain = await compare_with_bare_aiohttp(http, base, creds[0][0], etags[0], seconds, concurrency)
                    if plain is not None:
                        await compare_tls(http, url, creds[0][0], etags[0], seconds, concurrency, plain)
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
    parser.add_argument("--secrets", action="store_true",
                        help="every stack also holds a Secret of five values, sealed: the 200s open them")
    args = parser.parse_args()
    asyncio.run(run(args.agents, args.stacks, args.seconds, args.concurrency, args.secrets))
