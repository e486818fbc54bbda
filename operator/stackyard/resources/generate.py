"""`make crds`: write the CRDs from `stackyard.resources` to the three places they are installed from.

    python -m stackyard.resources.generate [--check] [ROOT]

`crds/` (kubectl apply -f crds/, `make run`), `manifests/crds/` (the kustomize base) and
`charts/stackyard/files/crds/` (the Helm chart) each get one file per CRD. `--check` writes nothing and exits 1
when a file differs from what would be written (tests/test_crds.py runs it).
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


def render(crd: dict[str, Any]) -> str:
    """One CRD as YAML, keys in the source's order (what kubectl explain shows), long lines folded."""
    return HEADER + yaml.safe_dump(crd, sort_keys=False, width=110, allow_unicode=True)


def files(root: Path) -> dict[Path, str]:
    """Every generated file under `root` and its content."""
    return {root / folder / f"{crd['metadata']['name']}.yaml": render(crd) for folder in DESTINATIONS for crd in CRDS}


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
