"""Multi-document YAML as stackyard writes it: libyaml when present, sorted keys, block style, `---` before each
document. One place, so canonical YAML, sealed content and per-agent renderings read and write alike."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import yaml

_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)  # libyaml's emitter is ~10x faster than PyYAML's own


def load_documents(text: str) -> list[Any]:
    return list(yaml.load_all(text, Loader=_LOADER))


def dump_documents(documents: Iterable[Any]) -> str:
    return yaml.dump_all(list(documents), Dumper=_DUMPER, sort_keys=True, default_flow_style=False,
                         explicit_start=True, allow_unicode=True)
