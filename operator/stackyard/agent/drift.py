"""Drift of an applied object, pure: which of the fields the agent set differ now, and who else wrote.

Server-side apply records every writer in metadata.managedFields. A field the
agent set that now holds another value *and* a write by another field manager
since the agent's own apply is drift; a difference without another writer is
the API server's defaulting or normalization (a quantity written `0.5` read as
`500m`), not drift.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

MAX_FIELDS = 20


def changed_fields(desired: Any, live: Any, path: str = "") -> list[str]:
    """Dotted paths of the values `desired` sets that `live` does not hold (lists compared item by item)."""
    if isinstance(desired, Mapping):
        if not isinstance(live, Mapping):
            return [path or "."]
        found: list[str] = []
        for key, value in desired.items():
            if not path and key == "status":
                continue
            child = f"{path}.{key}" if path else str(key)
            found += [child] if key not in live else changed_fields(value, live[key], child)
        return found[:MAX_FIELDS]
    if isinstance(desired, list):
        if not isinstance(live, list) or len(live) != len(desired):
            return [path]
        found = []
        for index, (want, have) in enumerate(zip(desired, live)):
            found += changed_fields(want, have, f"{path}[{index}]")
        return found[:MAX_FIELDS]
    return [] if desired == live else [path]


def _time(entry: Mapping[str, Any]) -> datetime | None:
    try:
        return datetime.fromisoformat(str(entry.get("time", "")).replace("Z", "+00:00"))
    except ValueError:
        return None


def other_writers(live: Mapping[str, Any], manager: str) -> list[str]:
    """Field managers other than `manager` that wrote the object (not its status) since `manager`'s last apply."""
    entries = [e for e in (live.get("metadata") or {}).get("managedFields") or () if isinstance(e, Mapping)]
    ours = [_time(e) for e in entries if e.get("manager") == manager and e.get("operation") == "Apply"]
    since = max((t for t in ours if t is not None), default=None)
    writers = []
    for entry in entries:
        if entry.get("manager") == manager or entry.get("subresource") == "status":
            continue
        at = _time(entry)
        if since is None or at is None or at >= since:
            writers.append(str(entry.get("manager") or "unknown"))
    return sorted(set(writers))


def drift(desired: Mapping[str, Any], live: Mapping[str, Any] | None, manager: str) -> dict[str, Any] | None:
    """`{fields, managers}` when another writer changed fields the agent set, else None."""
    if live is None:
        return None
    fields = changed_fields(desired, live)
    writers = other_writers(live, manager)
    if not fields or not writers:
        return None
    return {"fields": fields, "managers": writers}
