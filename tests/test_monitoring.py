"""The alerting rules and Grafana dashboards (README, "Monitoring") checked with the real promtool and against
the metrics stackyard's processes export.

promtool is Debian's, fetched into the virtualenv by `make test`. The metric names come from scrapes of a
running `stackyard run` (operator and agent API, against the Kubernetes emulator and a real PostgreSQL) and a
running `stackyard dbagent` (watching a real primary and its streaming standby), never from a hand-kept list;
the agent's families come from the registry `stackyard agent` serves (an agent process needs a target cluster,
which the other tests give it; its metric names do not depend on one).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import generate_latest

from stackyard.api.app import api_routes
from stackyard.metrics import AgentMetrics
from stackyard.store.embedded import free_port

from .emulator import ROOT
from .builders import configmap
from .operator_harness import AGENTS, STACKS, eventually
from .test_dbagent import servers  # noqa: F401  (module-scoped primary, plain server and streaming standby)
from .test_dbagent_process import fetch_metrics, write_config
from .test_run_command import write_kubeconfig

PROMTOOL = Path(sys.executable).parent / "promtool"
MONITORING = ROOT / "monitoring"
RULE_TESTS = sorted((MONITORING / "tests").glob("*.yaml"))
# Values for Grafana's variables, so a panel's query is plain PromQL that promtool can parse.
GRAFANA_VARIABLES = {"__rate_interval": "5m", "__interval": "1m", "__range": "1h", "namespace": ".*", "server": ".*"}
METRIC_NAME = re.compile(r"\b(?:stackyard|pg)_[a-z0-9_]+\b")


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run the real promtool; a missing binary fails the test with how to get it."""
    if not PROMTOOL.exists():
        pytest.fail(f"promtool is not at {PROMTOOL}: `make test` (and `make venv`) unpack it from Debian's"
                    " prometheus package (see the Makefile); elsewhere, put a promtool 2.x binary there")
    return subprocess.run([str(PROMTOOL), *args], capture_output=True, text=True, timeout=120, cwd=cwd)


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load((MONITORING / "alerts.yaml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def dashboards() -> dict[str, dict[str, Any]]:
    return {path.stem: json.loads(path.read_text()) for path in sorted((MONITORING / "dashboards").glob("*.json"))}


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, rows' nested panels included."""
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", ())


def queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, PromQL with Grafana's variables replaced) of every query of every panel."""
    found = []
    for panel in panels(dashboard):
        for target in panel.get("targets", ()):
            expr = re.sub(r"\$\{?(\w+)\}?", lambda m: GRAFANA_VARIABLES[m.group(1)], target["expr"])
            found.append((panel["title"], expr))
    return found


def every_query() -> list[str]:
    exprs = [rule["expr"] for rule in alert_rules()]
    return exprs + [expr for dashboard in dashboards().values() for _, expr in queries(dashboard)]


def test_the_rules_are_valid_and_pass_their_promtool_tests():
    check = promtool("check", "rules", str(MONITORING / "alerts.yaml"))
    assert check.returncode == 0, check.stdout + check.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in check.stdout
    result = promtool("test", "rules", *(path.name for path in RULE_TESTS), cwd=MONITORING / "tests")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(RULE_TESTS)


def test_promtool_fails_a_rule_test_that_expects_the_wrong_alert(tmp_path):
    """The rule tests can fail: a case expecting an alert where the series do not fire it is reported."""
    broken = tmp_path / "broken_test.yaml"
    broken.write_text(yaml.safe_dump({
        "rule_files": [str(MONITORING / "alerts.yaml")], "evaluation_interval": "1m",
        "tests": [{"interval": "1m", "input_series": [{"series": 'pg_up{server="fine"}', "values": "1x10"}],
                   "alert_rule_test": [{"eval_time": "5m", "alertname": "StackyardPostgresDown",
                                        "exp_alerts": [{"exp_labels": {"severity": "critical", "server": "fine"}}]}]}],
    }))
    result = promtool("test", "rules", str(broken))
    assert result.returncode != 0 and "FAILED" in result.stdout + result.stderr


def test_every_alert_is_tested_firing_and_not_firing():
    fires, silent = set(), set()
    for path in RULE_TESTS:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", ()):
                (fires if check.get("exp_alerts") else silent).add(check["alertname"])
    names = {rule["alert"] for rule in alert_rules()}
    assert names - fires == set(), "alerts no test sees firing"
    assert names - silent == set(), "alerts no test sees staying silent"


def test_every_alert_has_severity_summary_description_and_a_runbook_section():
    runbooks = (ROOT / "docs/runbooks.md").read_text()
    headings = set(re.findall(r"^## (\w+)$", runbooks, re.MULTILINE))
    readme = (ROOT / "README.md").read_text()
    monitoring = readme[readme.index("## Monitoring"):]
    monitoring = " ".join(monitoring[:monitoring.index("\n## ", 1)].split())  # as rendered: lines wrap anywhere
    for rule in alert_rules():
        name = rule["alert"]
        assert rule["labels"]["severity"] in ("critical", "warning", "info"), name
        assert set(rule["annotations"]) == {"summary", "description", "runbook_url"}, name
        assert rule["annotations"]["runbook_url"].endswith(f"docs/runbooks.md#{name.lower()}"), name
        assert name in headings, f"docs/runbooks.md has no section '## {name}'"
        assert f"`{name}`" in monitoring, f"README's Monitoring section does not list {name}"
    for title in (title for dashboard in dashboards().values() for title, _ in queries(dashboard)):
        assert title in monitoring, f"README's Monitoring section does not list the panel {title!r}"


def test_dashboards_use_current_grafana_and_a_datasource_variable():
    for name, dashboard in dashboards().items():
        assert dashboard["schemaVersion"] >= 39, name
        variables = {v["name"]: v for v in dashboard["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
        ids = [panel["id"] for panel in panels(dashboard)]
        assert len(ids) == len(set(ids)), f"{name}: panel ids repeat"
        text = json.dumps(dashboard)
        uids = set(re.findall(r'"uid": "([^"]*)"', text)) - {dashboard["uid"]}
        assert uids == {"${datasource}"}, f"{name}: a datasource uid other than the variable: {uids}"
        for panel in panels(dashboard):
            if panel["type"] != "row":
                assert panel["targets"] and panel["datasource"]["uid"] == "${datasource}", (name, panel["title"])
        cells = [(x, y, panel["title"]) for panel in panels(dashboard) for g in [panel["gridPos"]]
                 for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])]
        assert all(0 <= x < 24 for x, _, _ in cells), f"{name}: a panel beyond Grafana's 24 columns"
        taken: dict[tuple[int, int], str] = {}
        for x, y, title in cells:
            assert taken.setdefault((x, y), title) == title, f"{name}: {title!r} overlaps {taken[(x, y)]!r}"


def test_every_dashboard_query_parses_as_promql(tmp_path):
    rules = [{"record": f"dashboard:query_{index}", "expr": expr}
             for index, (_, expr) in enumerate(q for d in dashboards().values() for q in queries(d))]
    path = tmp_path / "dashboard-queries.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    result = promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


def exported_names(text: str) -> set[str]:
    """The series names a scrape in the text format (0.0.4) offers, as Prometheus stores them: every sample's
    name as written, and the names of families without samples yet (from their TYPE line)."""
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            suffixes = ("_bucket", "_sum", "_count") if kind == "histogram" else ("",)
            names |= {name + suffix for suffix in suffixes}
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


async def test_every_metric_the_rules_and_dashboards_name_is_exported(kube_server, db_url, servers,  # noqa: F811
                                                                      tmp_path):
    named = {name for expr in every_query() for name in METRIC_NAME.findall(expr)}
    kubeconfig = tmp_path / "kubeconfig"
    write_kubeconfig(kubeconfig, kube_server.url)
    metrics_port, dbagent_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("STACKYARD_")}
    env.update(KUBECONFIG=str(kubeconfig), STACKYARD_DATABASE_URL=db_url,
               STACKYARD_LEADER_ELECTION_NAMESPACE="stackyard-system", HOSTNAME="operator-0")
    write_config(tmp_path / "dbagent.yaml", tmp_path / "dbagent.sqlite", dbagent_port,
                 {"primary": servers["primary"].url(), "standby": servers["replica"].url()})
    processes = [
        subprocess.Popen([sys.executable, "-m", "stackyard", "run", "--metrics-address", f"127.0.0.1:{metrics_port}",
                          "--health-address", f"127.0.0.1:{free_port()}", "--api-address", f"127.0.0.1:{free_port()}",
                          "--heartbeat-interval", "1s"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         text=True),
        subprocess.Popen([sys.executable, "-m", "stackyard", "dbagent", "--config", str(tmp_path / "dbagent.yaml")],
                         env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True),
    ]
    agent = exported_names(generate_latest(AgentMetrics().registry).decode())
    try:
        async def all_exported() -> bool:
            exported = set(agent)
            for port in (metrics_port, dbagent_port):
                exported |= exported_names(await fetch_metrics(port) or "")
            left = named - exported
            assert not left, f"named by a rule or panel but exported by no stackyard process: {sorted(left)}"
            return True

        await eventually(all_exported, timeout=60)
    finally:
        for proc in processes:
            proc.send_signal(signal.SIGTERM)
        for proc in processes:
            try:
                proc.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
    assert {"stackyard_database_up", "pg_replication_lag_seconds", "stackyard_dbagent_replica_lag_seconds",
            "pg_settings_max_connections", "stackyard_agent_last_sync_timestamp_seconds"} <= named


def _condition(kind: str, status: str) -> dict[str, str]:
    return {"type": kind, "status": status, "reason": "Test", "message": "",
            "lastTransitionTime": "2026-12-02T00:00:00Z"}


async def test_the_kubectl_commands_of_the_fleet_alerts_list_the_objects_concerned(cluster, kube_server, tmp_path):
    """Fleet alerts cannot carry Stack or Agent names (bounded labels); their description gives a kubectl command
    instead. Each runs here as the on-call would, with the real kubectl, against the emulator holding objects in
    every state (statuses written directly: no operator runs)."""
    stacks = {("team-a", "web"): ({"failed": 2, "degraded": 0}, "True"),
              ("team-b", "api"): ({"failed": 0, "degraded": 1}, "False"),
              ("team-b", "fine"): ({"failed": 0, "degraded": 0}, "False")}
    for (namespace, name), (targets, halted) in stacks.items():
        await cluster.create(STACKS, {"metadata": {"name": name, "namespace": namespace},
                                      "spec": {"resources": [configmap("a")]}})
        await cluster.client.merge_patch(STACKS.path(namespace, name) + "/status", {"status": {
            "targets": {"total": 3, **targets}, "conditions": [_condition("RolloutHalted", halted)]}})
    agents = {("team-a", "edge-1"): "Stale", ("team-a", "edge-2"): "Pending", ("team-b", "edge-3"): "Active"}
    for (namespace, name), phase in agents.items():
        await cluster.create(AGENTS, {"metadata": {"name": name, "namespace": namespace},
                                      "spec": {"clusterName": f"{name}-cluster"}})
        await cluster.client.merge_patch(AGENTS.path(namespace, name) + "/status", {"status": {"phase": phase}})
    kubeconfig = tmp_path / "kubeconfig"
    write_kubeconfig(kubeconfig, kube_server.url)
    env = {**os.environ, "KUBECONFIG": str(kubeconfig), "PATH": f"{PROMTOOL.parent}:{os.environ['PATH']}"}
    expected = {
        "StackyardStacksFailing": ["team-a/web failed=2", "team-b/api degraded=1"],
        "StackyardRolloutHalted": ["team-a/web True"],
        "StackyardAgentsStale": ["team-a/edge-1 edge-1-cluster"],
        "StackyardAgentsNeverConnected": ["team-a/edge-2 edge-2-cluster"],
    }
    rules = {rule["alert"]: rule for rule in alert_rules()}
    for alert, lines in expected.items():
        command = re.search(r"kubectl get .*$", rules[alert]["annotations"]["description"]).group(0)
        result = await asyncio.to_thread(subprocess.run, ["bash", "-c", command], env=env, capture_output=True,
                                         text=True, timeout=60)
        assert result.returncode == 0, (alert, result.stderr)
        assert [line.strip() for line in result.stdout.splitlines()] == lines, (alert, command, result.stdout)


def test_every_route_a_rule_or_panel_names_is_served():
    """A `route` label value in a query is the path of one of the API's routes: renaming a route must not
    silently empty an alert (the latency alert leaves the long-polled target state out by its path)."""
    served = {route.path for route in api_routes()}
    named = {value for expr in every_query() for value in re.findall(r'\broute\s*!?=~?\s*"([^"]*)"', expr)}
    assert named, "the rules name at least the target-state route"
    assert named <= served, f"routes named but not served: {sorted(named - served)}"
