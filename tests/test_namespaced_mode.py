"""`stackyard run --namespace ...` with Role-only RBAC: no cluster-wide reads, honest readiness.

The emulator refuses what a Role-only install refuses on a real API server
(403): every cluster-wide read (namespaces, CRDs, and lists of namespaced
kinds across all namespaces) and everything in namespaces without a Role.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

import aiohttp

from stackyard.store.embedded import free_port

from .builders import configmap
from .operator_harness import STACKS, condition, eventually
from .test_run_command import fetch, write_kubeconfig

ALLOWED_NAMESPACES = {"team-a", "team-c"}
NAMESPACED = re.compile(r"^/apis?/.*?/namespaces/([^/]+)/")


def role_only(method: str, path: str, user_agent: str) -> bool:
    """True for what the operator's Role-only RBAC does not allow. Discovery is always allowed.

    The test's own client (user agent "stackyard") is an admin.
    """
    if user_agent == "stackyard":
        return False
    if path in ("/api", "/apis", "/version") or re.fullmatch(r"/apis?/[^/]+(/[^/]+)?", path):
        return False  # discovery and /version: every authenticated user may read them (system:discovery)
    match = NAMESPACED.match(path)
    if match is None:
        return True  # cluster-wide: namespaces, CRDs, or a list across all namespaces
    return match.group(1) not in ALLOWED_NAMESPACES or (match.group(1) == "team-c" and "/stackyard.dev/" in path)


async def _readyz(port: int) -> tuple[int, str]:
    try:
        return await fetch(f"http://127.0.0.1:{port}/readyz")
    except aiohttp.ClientError:
        return 0, ""


async def test_namespaced_operator_with_role_only_rbac(kube_server, db_url, cluster, tmp_path):
    kube_server.emulator.forbid = role_only
    kubeconfig = tmp_path / "kubeconfig"
    write_kubeconfig(kubeconfig, kube_server.url)
    metrics_port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("STACKYARD_")}
    env.update(KUBECONFIG=str(kubeconfig), STACKYARD_DATABASE_URL=db_url)

    def run(namespaces: str) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "stackyard", "run", "--namespace", namespaces,
             "--metrics-address", f"127.0.0.1:{metrics_port}", "--health-address", f"127.0.0.1:{free_port()}",
             "--api-address", f"127.0.0.1:{free_port()}"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )

    def stop(proc: subprocess.Popen) -> str:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.communicate(timeout=60)[1]
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.communicate()[1]

    await cluster.create(STACKS, {"metadata": {"name": "web", "namespace": "team-a"},
                                  "spec": {"resources": [configmap("a")]}})
    await cluster.create(STACKS, {"metadata": {"name": "web", "namespace": "team-b"},
                                  "spec": {"resources": [configmap("a")]}})
    before = kube_server.emulator.count()
    proc = run("team-a")
    try:
        async def reconciled():
            return condition(await cluster.get(STACKS, "web", "team-a"), "Ready")

        ready = await eventually(reconciled, timeout=20)
        assert ready["status"] == "True"

        async def operator_ready():
            return (await _readyz(metrics_port))[0] == 200

        await eventually(operator_ready, timeout=20)
    finally:
        err = stop(proc)
    assert proc.returncode == 0, err[-3000:]
    assert "stackyard is ready: watching namespaces team-a" in err
    # a whole word: a random port such as 55403 in a "listening on" line is no refusal
    assert not re.search(r"\bERROR\b|\b403\b", err), err[-3000:]
    assert (await cluster.get(STACKS, "web", "team-b")).get("status") is None, "team-b is not watched"
    cluster_wide = kube_server.emulator.count("GET", "/api/v1/namespaces") - kube_server.emulator.count(
        "GET", "/api/v1/namespaces/")
    assert cluster_wide == 0, "no cluster-wide namespace listing"
    assert kube_server.emulator.count("GET", "customresourcedefinitions") == 0
    assert kube_server.emulator.count() > before

    # a namespace the operator may not read: /readyz says so, and the operator does not claim readiness
    proc = run("team-a,team-c")
    try:
        async def refused():
            status, text = await _readyz(metrics_port)
            return text if status == 503 and "team-c" in text else None

        assert "403" in await eventually(refused, timeout=20)
    finally:
        err = stop(proc)
    assert "stackyard is ready" not in err
    assert "the operator is not ready" in err and "team-c" in err
