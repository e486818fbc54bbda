"""Leader election on a coordination.k8s.io/v1 Lease, so a second operator replica can stand by.

Only the holder runs the Kopf operator; every replica serves the agent API.
Writes carry the Lease's resourceVersion, so two candidates never both win.
A holder that cannot renew before its lease runs out steps down (the process
exits and Kubernetes restarts it as a candidate).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from ..kube import CALL_ERRORS, ConflictError, Kube, Ref, describe

log = logging.getLogger(__name__)


class LostLeadership(Exception):
    """The lease was taken over or could not be renewed in time."""


def wall_now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass
class LeaseElector:
    """Lease-based election judged as client-go does: by when *this* replica last saw the record change.

    A candidate never compares the holder's `renewTime` with its own wall clock
    (clock skew between nodes would then let it take a live lease). It
    remembers the record it last observed and the moment, on its own monotonic
    clock, it observed it; the lease is expired only when the record has not
    changed for `leaseDurationSeconds` of that clock.
    """

    kube: Kube
    namespace: str
    identity: str
    name: str = "stackyard-operator"
    lease_seconds: int = 15
    renew_every: float = 5.0
    clock: Callable[[], float] = time.monotonic
    wall_clock: Callable[[], datetime] = wall_now
    _observed: tuple[Any, ...] | None = field(default=None, init=False)
    _observed_at: float = field(default=0.0, init=False)

    @property
    def ref(self) -> Ref:
        return Ref("coordination.k8s.io/v1", "Lease", self.name, self.namespace)

    def _spec(self, acquire: bool, transitions: int) -> dict[str, Any]:
        stamp = self.wall_clock().isoformat(timespec="microseconds").replace("+00:00", "Z")
        spec: dict[str, Any] = {"holderIdentity": self.identity, "leaseDurationSeconds": self.lease_seconds,
                                "renewTime": stamp, "leaseTransitions": transitions}
        if acquire:
            spec["acquireTime"] = stamp
        return spec

    def _expired(self, spec: dict[str, Any]) -> bool:
        """Note the record; True when it has not changed for a lease duration of our own clock."""
        record = (spec.get("holderIdentity"), spec.get("renewTime"), spec.get("leaseTransitions"))
        now = self.clock()
        if record != self._observed:
            self._observed, self._observed_at = record, now
            return False
        return now - self._observed_at > float(spec.get("leaseDurationSeconds") or self.lease_seconds)

    async def try_acquire(self) -> bool:
        """One attempt: create the Lease, renew our own, or take over one whose record stopped changing."""
        lease = await self.kube.get(self.ref)
        if lease is None:
            body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": self.name, "namespace": self.namespace}, "spec": self._spec(True, 0)}
            try:
                await self.kube.create(body)
                return True
            except ConflictError:
                return False
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity")
        expired = self._expired(spec)
        if holder != self.identity and not expired:
            return False
        transitions = int(spec.get("leaseTransitions") or 0) + (0 if holder == self.identity else 1)
        patch = {"metadata": {"resourceVersion": lease["metadata"]["resourceVersion"]},
                 "spec": self._spec(holder != self.identity, transitions)}
        try:
            await self.kube.merge_patch(self.ref, patch)
            return True
        except ConflictError:
            return False  # someone else wrote first

    async def acquire(self) -> None:
        """Wait until this replica holds the lease."""
        announced = False
        while True:
            try:
                if await self.try_acquire():
                    log.info("became the leader (lease %s/%s) as %s", self.namespace, self.name, self.identity)
                    return
            except CALL_ERRORS as exc:
                log.warning("leader election failed (%s); retrying", describe(exc))
            if not announced:
                log.info("standing by: another replica holds lease %s/%s", self.namespace, self.name)
                announced = True
            await asyncio.sleep(self.renew_every)

    async def keep(self) -> None:
        """Renew until cancelled; raise LostLeadership when the lease is lost."""
        last_renewed = self.clock()
        while True:
            await asyncio.sleep(self.renew_every)
            try:
                if await self.try_acquire():
                    last_renewed = self.clock()
                    continue
                raise LostLeadership(f"another replica took lease {self.namespace}/{self.name}")
            except CALL_ERRORS as exc:
                if self.clock() - last_renewed > self.lease_seconds:
                    raise LostLeadership(f"could not renew lease {self.namespace}/{self.name}: {describe(exc)}") from None
                log.warning("renewing the lease failed (%s); retrying", describe(exc))
