"""Prometheus metrics of the operator and the agent API (README, "Metrics").

Each process builds one `Metrics` with its own registry (no module-level
state), so tests can run several operators side by side. Labels are bounded:
kinds, results, routes and codes, never a resource or agent name.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from .protocol import AGENT_PHASES, HEALTH_UNKNOWN, HEALTHS

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
LAG_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
# The counts of a Stack's status.targets by apply state (controller/status.py counts Deleting as pending).
TARGET_STATES = ("Applied", "Failed", "Pending")
# The age classes of `stackyard_agents_by_heartbeat_age` (bounded labels): upper bounds in seconds, in order.
HEARTBEAT_AGE_LIMITS = ((60.0, "under_1m"), (300.0, "1m_to_5m"), (3600.0, "5m_to_1h"))
HEARTBEAT_AGES = ("never", *(name for _, name in HEARTBEAT_AGE_LIMITS), "over_1h")


def heartbeat_age(last_heartbeat: datetime | None, now: datetime) -> str:
    """The age class of one agent's last heartbeat (one of HEARTBEAT_AGES)."""
    if last_heartbeat is None:
        return HEARTBEAT_AGES[0]
    age = (now - last_heartbeat).total_seconds()
    return next((name for limit, name in HEARTBEAT_AGE_LIMITS if age < limit), HEARTBEAT_AGES[-1])


@dataclass(frozen=True)
class StackFigures:
    """One Stack's contribution to the Stack gauges."""

    health: dict[str, int]
    states: dict[str, int]
    halted: bool
    failing: bool
    rolling: bool


class Metrics:
    """All of stackyard's operator and API metrics on one registry."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.reconcile_total = Counter(
            "stackyard_reconcile", "Reconciles by kind and result (success, stalled, retry).", ["kind", "result"],
            registry=r,
        )
        self.reconcile_errors_total = Counter(
            "stackyard_reconcile_errors", "Reconciles that failed, by kind and reason.", ["kind", "reason"], registry=r
        )
        self.reconcile_duration_seconds = Histogram(
            "stackyard_reconcile_duration_seconds", "Time spent in one reconcile, by kind.", ["kind"],
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.deployment_objects_emitted_total = Counter(
            "stackyard_deployment_objects_emitted", "Deployment objects inserted because a Stack changed.", registry=r
        )
        self.agents = Gauge("stackyard_agents", "Agents by phase.", ["phase"], registry=r)
        self.agents_by_heartbeat_age = Gauge(
            "stackyard_agents_by_heartbeat_age", "Agents by the age of their last heartbeat (never: none yet).",
            ["age"], registry=r,
        )
        self.database_up = Gauge(
            "stackyard_database_up", "1 when the operator's last round trip to PostgreSQL (every heartbeat interval)"
            " succeeded, 0 when it failed.", registry=r,
        )
        self.stack_targets = Gauge(
            "stackyard_stack_targets", "Targeted agents of every Stack by the health they report for its latest"
            " version (Unknown: none reported yet).", ["health"], registry=r,
        )
        self.rollout_halted = Gauge(
            "stackyard_rollout_halted", "Stacks whose staged rollout is halted (an agent Degraded, or paused).",
            registry=r,
        )
        self.stack_target_states = Gauge(
            "stackyard_stack_target_states", "Targeted agents of every Stack by the state of their latest apply"
            " (Applied, Failed, Pending).", ["state"], registry=r,
        )
        self.rollouts_in_progress = Gauge(
            "stackyard_rollouts_in_progress", "Stacks whose staged rollout of their latest version is going on (not"
            " every target Healthy on it yet, not halted).", registry=r,
        )
        self.stacks_failing = Gauge(
            "stackyard_stacks_failing", "Stacks with at least one target Failed or Degraded.", registry=r,
        )
        for health in HEALTHS:
            self.stack_targets.labels(health)  # exported at 0 from the start
        for state in TARGET_STATES:
            self.stack_target_states.labels(state)
        self._stacks: dict[str, StackFigures] = {}
        self._request_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self.status_mirror_lag_seconds = Histogram(
            "stackyard_status_mirror_lag_seconds",
            "Time from an agent's heartbeat or event reaching PostgreSQL to the custom resource status patch.",
            buckets=LAG_BUCKETS, registry=r,
        )
        self.status_patches_total = Counter(
            "stackyard_status_patches", "Status patches written by the mirror, by kind.", ["kind"], registry=r
        )
        self.api_requests_total = Counter(
            "stackyard_api_requests", "Agent API requests by route, method and status code.", ["route", "method", "code"],
            registry=r,
        )
        self.api_request_duration_seconds = Histogram(
            "stackyard_api_request_duration_seconds", "Agent API latency by route.", ["route"],
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.api_limited_total = Counter(
            "stackyard_api_limited", "Agent API requests refused with 429, by limit (long_polls, events, heartbeats,"
            " auth_failures).", ["limit"], registry=r,
        )
        self.api_connections_refused_total = Counter(
            "stackyard_api_connections_refused", "Connections closed on arrival: the process's connection limit"
            " was reached.", registry=r,
        )
        self.api_accept_errors_total = Counter(
            "stackyard_api_accept_errors", "Failures to accept a connection (out of file descriptors).", registry=r,
        )
        self.api_long_polls = Gauge("stackyard_api_long_polls", "Long-polls waiting now.", registry=r)
        self.api_listener_up = Gauge(
            "stackyard_api_listener_up", "1 while the API's LISTEN connection is proven alive (a round trip within"
            " the last seconds): only then are 304s answered from its cache.", registry=r,
        )
        self.tls_reload_errors_total = Counter(
            "stackyard_api_tls_reload_errors", "Renewed TLS files that did not load (the previous ones stay in use).",
            registry=r,
        )
        self.tls_certificate_expiry = Gauge(
            "stackyard_api_tls_certificate_expiry_timestamp_seconds",
            "Unix time at which the certificate the API serves expires.", registry=r,
        )
        self.db_pool_connections = Gauge(
            "stackyard_db_pool_connections", "PostgreSQL pool connections by state (size, idle, waiting).", ["state"],
            registry=r,
        )
        self.task_errors_total = task_errors(r)
        self.retention_purged_total = Counter(
            "stackyard_retention_purged_rows", "Soft-deleted rows hard-deleted by retention, by table.", ["table"],
            registry=r,
        )

    def observe_request(self, route: str, method: str, code: int, seconds: float) -> None:
        """Count one API request and its latency (label children kept: `labels()` on every request is costly)."""
        key = (route, method, code)
        children = self._request_children.get(key)
        if children is None:
            children = (self.api_requests_total.labels(route, method, str(code)),
                        self.api_request_duration_seconds.labels(route))
            self._request_children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def observe_stack(self, stack_id: str, status: Mapping[str, Any]) -> None:
        """Keep the Stack gauges (targets by health and state; failing, halted and rolling Stacks) current with one
        Stack's status."""
        targets = status.get("targets") or {}
        health = {h: int(targets.get(h.lower()) or 0) for h in HEALTHS if h != HEALTH_UNKNOWN}
        health[HEALTH_UNKNOWN] = max(0, int(targets.get("total") or 0) - sum(health.values()))
        states = {s: int(targets.get(s.lower()) or 0) for s in TARGET_STATES}
        halted = any(c.get("type") == "RolloutHalted" and c.get("status") == "True"
                     for c in status.get("conditions") or () if isinstance(c, Mapping))
        failing = bool(states["Failed"] or health["Degraded"])
        rollout = status.get("rollout") or {}
        rolling = bool(rollout) and not halted and int(rollout.get("healthy") or 0) < int(rollout.get("total") or 0)
        self._move_stack(stack_id, StackFigures(health, states, halted, failing, rolling))

    def forget_stack(self, stack_id: str) -> None:
        self._move_stack(stack_id, None)

    def _move_stack(self, stack_id: str, new: StackFigures | None) -> None:
        """Replace one Stack's contribution to the totals (constant time: no sum over every Stack)."""
        old = self._stacks.pop(stack_id, None)
        if new is not None:
            self._stacks[stack_id] = new
        if old == new:
            return
        for sign, entry in ((-1, old), (1, new)):
            if entry is None:
                continue
            for health, value in entry.health.items():
                if value:
                    self.stack_targets.labels(health).inc(sign * value)
            for state, value in entry.states.items():
                if value:
                    self.stack_target_states.labels(state).inc(sign * value)
            if entry.halted:
                self.rollout_halted.inc(sign)
            if entry.failing:
                self.stacks_failing.inc(sign)
            if entry.rolling:
                self.rollouts_in_progress.inc(sign)

    def observe_agents(self, phases: Iterable[str], ages: Iterable[str]) -> None:
        """Set `stackyard_agents{phase}` and `stackyard_agents_by_heartbeat_age{age}` from every agent's phase and
        heartbeat age class (classes absent from the counts are set to 0)."""
        for gauge, names, counts in ((self.agents, AGENT_PHASES, Tally(phases)),
                                     (self.agents_by_heartbeat_age, HEARTBEAT_AGES, Tally(ages))):
            for name in names:
                gauge.labels(name).set(counts.get(name, 0))

    def observe_pool(self, stats: dict[str, int]) -> None:
        """Copy psycopg_pool's get_stats() into the pool gauges."""
        self.db_pool_connections.labels("size").set(stats.get("pool_size", 0))
        self.db_pool_connections.labels("idle").set(stats.get("pool_available", 0))
        self.db_pool_connections.labels("waiting").set(stats.get("requests_waiting", 0))


def task_errors(registry: CollectorRegistry) -> Counter:
    """The one counter of unexpected errors in long-running loops (`tasks.forever`), by loop."""
    return Counter("stackyard_task_errors", "Unexpected errors in a long-running loop, which went on, by task.",
                   ["task"], registry=registry)


class AgentMetrics:
    """Metrics of `stackyard agent` (its own registry)."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.applies_total = Counter(
            "stackyard_agent_applies", "Deployment object apply attempts by result.", ["result"], registry=r
        )
        self.objects_applied_total = Counter(
            "stackyard_agent_objects_applied", "Objects applied with server-side apply.", registry=r
        )
        self.objects_pruned_total = Counter("stackyard_agent_objects_pruned", "Objects deleted by pruning.", registry=r)
        self.broker_errors_total = Counter(
            "stackyard_agent_broker_errors", "Failed calls to the agent API by operation.", ["operation"], registry=r
        )
        self.sync_duration_seconds = Histogram(
            "stackyard_agent_sync_duration_seconds", "Duration of one sync cycle.", buckets=LATENCY_BUCKETS, registry=r
        )
        self.last_sync_timestamp_seconds = Gauge(
            "stackyard_agent_last_sync_timestamp_seconds", "Unix time of the last completed sync cycle.", registry=r
        )
        self.drift_corrections_total = Counter(
            "stackyard_agent_drift_corrections",
            "Objects another field manager changed, reported as Drifted and applied again, by kind.", ["kind"],
            registry=r,
        )
        self.health_checks_total = Counter(
            "stackyard_agent_health_checks", "Health checks of a stack's objects (one GET per object).", registry=r
        )
        self.task_errors_total = task_errors(r)

