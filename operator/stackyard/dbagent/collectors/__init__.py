"""The sidecar's collectors: one module each, and the registry that owns their names and default intervals.

Adding a collector is one module with a `COLLECTOR` and one line here; the
config keys (`intervals.<name>`), the tasks and the exporter follow from it.
"""

from __future__ import annotations

from . import activity, locks, metrics, queries, replication
from .base import Collector, Previous, Reading

REGISTRY: dict[str, Collector] = {c.name: c for c in (activity.COLLECTOR, queries.COLLECTOR, replication.COLLECTOR,
                                                       locks.COLLECTOR, metrics.COLLECTOR)}
NAMES: tuple[str, ...] = tuple(REGISTRY)
DEFAULT_INTERVALS: dict[str, float] = {name: c.default_interval for name, c in REGISTRY.items()}

__all__ = ["DEFAULT_INTERVALS", "NAMES", "REGISTRY", "Collector", "Previous", "Reading"]
