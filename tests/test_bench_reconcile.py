"""bench/reconcile.py runs against the cluster of KUBECONFIG (here an emulator standing in for a real one)."""

from __future__ import annotations

import os
import subprocess
import sys

from .emulator import ROOT
from .test_run_command import write_kubeconfig


def test_reconcile_benchmark_uses_the_kubeconfig_cluster(kube_server, db_url, cluster, tmp_path):
    kubeconfig = tmp_path / "kubeconfig"
    write_kubeconfig(kubeconfig, kube_server.url)
    env = {**os.environ, "KUBECONFIG": str(kubeconfig), "STACKYARD_BENCH_DATABASE_URL": db_url}
    result = subprocess.run([sys.executable, str(ROOT / "bench/reconcile.py"), "--stacks", "5"],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "stacks per second" in result.stdout
    assert kube_server.emulator.count("POST", "/namespaces/bench/stacks") == 5, "the Stacks went to that cluster"
