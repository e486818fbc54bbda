"""The sidecar's collectors: one module each, and the registry that owns their names and default intervals.

Adding a collector is one module with a `COLLECTOR` and one line here; the
config keys (`intervals.<name>`), the tasks and the exporter follow from it.
"""

from __future__ import annotations

from . import activity, locks, metrics, queries, replication
from .base import Collector, Family, Previous, Reading

REGISTRY: dict[str, Collector] = {c.name: c for c in (activity.COLLECTOR, queries.COLLECTOR, replication.COLLECTOR,
                                                       locks.COLLECTOR, metrics.COLLECTOR)}
NAMES: tuple[str, ...] = tuple(REGISTRY)
DEFAULT_INTERVALS: dict[str, float] = {name: c.default_interval for name, c in REGISTRY.items()}
# Names an alert rule's `metric` may use, and every exported PostgreSQL family with its type and help.
ALERT_METRICS: tuple[str, ...] = tuple(sorted({v for c in REGISTRY.values() for v in c.values}))
FAMILIES: dict[str, Family] = {name: f for c in REGISTRY.values() for name, f in c.families.items()}

__all__ = ["ALERT_METRICS", "DEFAULT_INTERVALS", "FAMILIES", "NAMES", "REGISTRY", "Collector", "Family", "Previous",
           "Reading"]
