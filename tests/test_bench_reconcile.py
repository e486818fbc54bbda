"""bench/reconcile.py runs against the cluster of KUBECONFIG (here an emulator standing in for a real one)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

from .emulator import ROOT
from .test_run_command import write_kubeconfig


async def test_reconcile_benchmark_uses_the_kubeconfig_cluster(kube_server, db_url, cluster, tmp_path):
    kubeconfig = tmp_path / "kubeconfig"
    write_kubeconfig(kubeconfig, kube_server.url)
    env = {**os.environ, "KUBECONFIG": str(kubeconfig), "STACKYARD_BENCH_DATABASE_URL": db_url}
    result = await asyncio.to_thread(subprocess.run, [sys.executable, str(ROOT / "bench/reconcile.py"), "--stacks", "5"],
                                     capture_output=True, text=True, env=env, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "stacks per second" in result.stdout
    assert kube_server.emulator.count("POST", "/stacks") == 5, "the Stacks went to that cluster"
    # and it leaves nothing behind: its Stacks (finalizers removed by the operator it ran) and its namespace go
    stacks = await cluster.client.get("/apis/stackyard.dev/v1alpha1/stacks")
    assert stacks["items"] == [], [s["metadata"]["name"] for s in stacks["items"]]
    namespaces = await cluster.client.get("/api/v1/namespaces")
    assert not [n for n in namespaces["items"] if n["metadata"]["name"].startswith("stackyard-bench-")]
