"""The shape of JSON-like values, computed without recursion (input may be nested arbitrarily deep)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def depth(value: Any) -> int:
    """Nesting depth of a JSON-like value (a scalar is 0)."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, level = stack.pop()
        deepest = max(deepest, level)
        if isinstance(item, Mapping):
            stack.extend((v, level + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, level + 1) for v in item)
    return deepest
