"""`stackyard run` as a real process: operator, metrics and liveness against the emulator and PostgreSQL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import aiohttp
import yaml
from prometheus_client.parser import text_string_to_metric_families

from stackyard.store.embedded import free_port

from .builders import configmap
from .operator_harness import AGENTS, STACKS, eventually


def write_kubeconfig(path, server: str) -> None:
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "test",
        "clusters": [{"name": "test", "cluster": {"server": server, "insecure-skip-tls-verify": True}}],
        "users": [{"name": "test", "user": {"token": "test-token"}}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test", "namespace": "default"}}],
    }))


async def fetch(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, await response.text()


async def test_run_reconciles_serves_metrics_and_health_and_stops_cleanly(kube_server, db_url, cluster, tmp_path):
    kubeconfig = tmp_path / "kubeconfig"
    write_kubeconfig(kubeconfig, kube_server.url)
    metrics_port, health_port, api_port = free_port(), free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("STACKYARD_")}
    env.update(KUBECONFIG=str(kubeconfig), STACKYARD_DATABASE_URL=db_url, STACKYARD_LOG_FORMAT="json",
               STACKYARD_LEADER_ELECTION_NAMESPACE="stackyard-system", HOSTNAME="operator-0")
    proc = subprocess.Popen(
        [sys.executable, "-m", "stackyard", "run", "--metrics-address", f"127.0.0.1:{metrics_port}",
         "--health-address", f"127.0.0.1:{health_port}", "--api-address", f"127.0.0.1:{api_port}",
         "--heartbeat-interval", "1s"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        await cluster.create(STACKS, {"metadata": {"name": "web"}, "spec": {"resources": [configmap("a")]}})
        try:
            await cluster.wait_condition(STACKS, "web", "Ready", "True", timeout=30)
        except AssertionError:
            proc.kill()
            raise AssertionError(proc.communicate()[1][-3000:]) from None
        lease = await cluster.client.get("/apis/coordination.k8s.io/v1/namespaces/stackyard-system/leases/stackyard-operator")
        assert lease["spec"]["holderIdentity"] == "operator-0", "the operator runs as the elected leader"

        async def metrics_ready():
            try:
                status, text = await fetch(f"http://127.0.0.1:{metrics_port}/metrics")
            except aiohttp.ClientError:
                return None
            return text if status == 200 and "stackyard_reconcile_total" in text else None

        text = await eventually(metrics_ready, timeout=30)
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples
        }
        assert samples[("stackyard_reconcile_total", (("kind", "Stack"), ("result", "success")))] >= 1
        assert samples[("stackyard_deployment_objects_emitted_total", ())] == 1
        assert any(name == "stackyard_reconcile_duration_seconds_bucket" for name, _ in samples)
        assert ("stackyard_db_pool_connections", (("state", "size"),)) in samples

        await cluster.create(AGENTS, {"metadata": {"name": "edge"}, "spec": {"clusterName": "eu-1"}})

        async def one_pending_agent():
            text = await metrics_ready()
            return (text and 'stackyard_agents{phase="Pending"} 1.0' in text
                    and 'stackyard_agents_by_heartbeat_age{age="never"} 1.0' in text
                    and "stackyard_database_up 1.0" in text)

        await eventually(one_pending_agent, timeout=30)

        async def healthy():
            try:
                return (await fetch(f"http://127.0.0.1:{health_port}/healthz"))[0] == 200
            except aiohttp.ClientError:
                return False

        await eventually(healthy, timeout=30)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            out, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
    assert proc.returncode == 0, err[-3000:]
    assert "Traceback" not in err


def test_kubeconfig_base64_certificates_are_decoded(tmp_path):
    """kind's kubeconfig embeds base64 CA data: the client must hand the decoded PEM to TLS."""
    import base64
    from pathlib import Path

    from stackyard.kube import load_configuration

    pem = (Path(__file__).parent / "data" / "test-ca.pem").read_bytes()  # a throwaway self-signed test CA
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "kind",
        "clusters": [{"name": "kind", "cluster": {"server": "https://127.0.0.1:6443",
                                                  "certificate-authority-data": base64.b64encode(pem).decode()}}],
        "users": [{"name": "kind", "user": {"token": "t"}}],
        "contexts": [{"name": "kind", "context": {"cluster": "kind", "user": "kind"}}],
    }))
    configuration = load_configuration(str(kubeconfig))
    assert configuration.verify_ssl
    assert Path(configuration.ssl_ca_cert).read_bytes() == pem
