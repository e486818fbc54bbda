"""Drift of an applied object, pure: which of the fields the agent set differ now, and who else wrote.

Server-side apply records every writer in metadata.managedFields. A field the
agent set that now holds another value *and* a write by another field manager
since the agent's own apply is drift; a difference without another writer is
the API server's defaulting or normalization (a quantity written `0.5` read as
`500m`), not drift. A field the agent set that is gone, or an object that is
gone, is drift whoever did it: the API server never removes what an apply set,
and a removal leaves no trace in managedFields (a manager that owns no field
any more has no entry).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

MAX_FIELDS = 20


def changed_fields(desired: Any, live: Any, path: str = "") -> list[str]:
    """Dotted paths of the values `desired` sets that `live` does not hold (lists compared item by item)."""
    return [field for field, _removed in _differences(desired, live, path)][:MAX_FIELDS]


def removed_fields(desired: Any, live: Any) -> list[str]:
    """Dotted paths of the keys `desired` sets that `live` does not have at all."""
    return [field for field, removed in _differences(desired, live, "") if removed][:MAX_FIELDS]


def _differences(desired: Any, live: Any, path: str) -> list[tuple[str, bool]]:
    """(path, removed?) of every value `desired` sets that `live` does not hold."""
    if isinstance(desired, Mapping):
        if not isinstance(live, Mapping):
            return [(path or ".", False)]
        found: list[tuple[str, bool]] = []
        for key, value in desired.items():
            if not path and key == "status":
                continue
            child = f"{path}.{key}" if path else str(key)
            found += [(child, True)] if key not in live else _differences(value, live[key], child)
        return found
    if isinstance(desired, list):
        if not isinstance(live, list) or len(live) != len(desired):
            return [(path, False)]
        found = []
        for index, (want, have) in enumerate(zip(desired, live)):
            found += _differences(want, have, f"{path}[{index}]")
        return found
    return [] if desired == live else [(path, False)]


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
    """`{fields, managers}` when someone changed what the agent set: the object deleted (`fields` is
    ["(deleted)"]), fields removed, or fields changed by another writer; else None."""
    if live is None:
        return {"fields": ["(deleted)"], "managers": []}
    fields = changed_fields(desired, live)
    writers = other_writers(live, manager)
    if fields and (writers or removed_fields(desired, live)):
        return {"fields": fields, "managers": writers}
    return None
