"""`make generated`: write every installed copy of a fact from its one source.

    python -m stackyard.resources.generate [--check] [ROOT]

The CRDs, from `stackyard.resources`: `crds/` (kubectl apply -f crds/, `make run`), `manifests/crds/` (the
kustomize base) and `charts/stackyard/files/crds/` (the Helm chart) each get one file per CRD.

The alerting rules and Grafana dashboards, from `monitoring/` in ROOT: the chart's `files/monitoring/` and the
kustomize components `manifests/components/prometheusrule/` (a PrometheusRule) and
`manifests/components/grafana-dashboards/` (the dashboards' JSON, made into ConfigMaps by its kustomization).

`--check` writes nothing and exits 1 when a file differs from what would be written (tests/test_packaging.py
runs it).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

from . import CRDS

DESTINATIONS = ("crds", "manifests/crds", "charts/stackyard/files/crds")
HEADER = "# Generated from operator/stackyard/resources/ by `make crds`: edit the source there, not this file.\n"
MONITORING = Path("monitoring")
CHART_MONITORING = Path("charts/stackyard/files/monitoring")
MONITORING_HEADER = "# Generated from monitoring/ by `make generated`: edit the source there, not this file.\n"


def render(crd: dict[str, Any]) -> str:
    """One CRD as YAML, keys in the source's order (what kubectl explain shows), long lines folded."""
    return HEADER + yaml.safe_dump(crd, sort_keys=False, width=110, allow_unicode=True)


def files(root: Path) -> dict[Path, str]:
    """Every generated file under `root` and its content."""
    generated = {root / folder / f"{crd['metadata']['name']}.yaml": render(crd)
                 for folder in DESTINATIONS for crd in CRDS}
    return {**generated, **monitoring_files(root)}


def prometheus_rule(rules: dict[str, Any]) -> str:
    """The rule groups as the PrometheusRule of the kustomize component."""
    rule = {"apiVersion": "monitoring.coreos.com/v1", "kind": "PrometheusRule",
            "metadata": {"name": "stackyard", "labels": {"app.kubernetes.io/name": "stackyard"}},
            "spec": {"groups": rules["groups"]}}
    return MONITORING_HEADER + yaml.safe_dump(rule, sort_keys=False, width=120, allow_unicode=True)


def monitoring_files(root: Path) -> dict[Path, str]:
    """The chart's and the kustomize components' copies of `monitoring/alerts.yaml` and its dashboards."""
    source = root / MONITORING
    alerts = (source / "alerts.yaml").read_text()
    copies = {
        root / CHART_MONITORING / "alerts.yaml": MONITORING_HEADER + alerts,
        root / "manifests/components/prometheusrule/prometheusrule.yaml": prometheus_rule(yaml.safe_load(alerts)),
    }
    for dashboard in sorted((source / "dashboards").glob("*.json")):
        for folder in (CHART_MONITORING / "dashboards", Path("manifests/components/grafana-dashboards")):
            copies[root / folder / dashboard.name] = dashboard.read_text()
    return copies


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", nargs="?", default=".", help="the repository root")
    parser.add_argument("--check", action="store_true", help="only report files that are out of date")
    args = parser.parse_args(argv)
    stale = []
    for path, content in files(Path(args.root)).items():
        current = path.read_text() if path.exists() else None
        if current == content:
            continue
        stale.append(path)
        if not args.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content)
    for path in stale:
        print(f"{'out of date' if args.check else 'wrote'}: {path}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
