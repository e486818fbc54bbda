"""The settings object of the operator process (one per `stackyard run`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

import kopf

GROUP = "stackyard.dev"
VERSION = "v1alpha1"
FINALIZER = "stackyard.dev/finalizer"
ROTATE_PAK_ANNOTATION = "stackyard.dev/rotate-pak"
FIELD_MANAGER = "stackyard-operator"


@dataclass
class OperatorConfig:
    """Everything the operator's handlers need to know, set once at start."""

    database_url: str
    namespaces: list[str] = field(default_factory=list)
    all_namespaces: bool = True
    heartbeat_interval: float = 10.0
    stale_after_missed: int = 3
    resync_interval: float = 30.0
    status_throttle: float = 60.0
    retention_age: timedelta = timedelta(days=7)
    retention_interval: float = 3600.0
    # Live agent events older than this are deleted by the retention loop (the newest of each kind stays).
    event_retention_age: timedelta = timedelta(days=7)
    pool_max_size: int = 10
    pool_timeout: float = 5.0
    # Every database call of the operator completes within this, or fails as unavailable (and is retried).
    database_deadline: float = 15.0
    # A deleted Agent's agent gets this long to remove what it holds before its key is revoked regardless.
    agent_deletion_timeout: float = 300.0
    # The keys that seal Secret data at rest (README, "Secrets"); None: Stacks with Secret data stall.
    encryption_key_file: str | None = None
    # Lease-based leader election: the namespace of the Lease (None: no election, run at once).
    leader_election_namespace: str | None = None
    identity: str = ""
    # Tests point the operator at an emulated API server; production uses kubeconfig or the service account.
    kube_connection: kopf.ConnectionInfo | None = None

    @property
    def stale_after(self) -> float:
        return self.heartbeat_interval * self.stale_after_missed
