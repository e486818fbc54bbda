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
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from ..kube import ApiResource, KubeClient, KubeError

log = logging.getLogger(__name__)

LEASES = ApiResource("coordination.k8s.io/v1", "Lease", "leases", True)


class LostLeadership(Exception):
    """The lease was taken over or could not be renewed in time."""


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _age(stamp: str | None) -> float:
    if not stamp:
        return float("inf")
    return (datetime.now(timezone.utc) - datetime.fromisoformat(stamp.replace("Z", "+00:00"))).total_seconds()


@dataclass
class LeaseElector:
    kube: KubeClient
    namespace: str
    identity: str
    name: str = "stackyard-operator"
    lease_seconds: int = 15
    renew_every: float = 5.0

    @property
    def path(self) -> str:
        return LEASES.path(self.namespace, self.name)

    def _spec(self, acquire: bool, transitions: int) -> dict[str, Any]:
        spec: dict[str, Any] = {"holderIdentity": self.identity, "leaseDurationSeconds": self.lease_seconds,
                                "renewTime": _now(), "leaseTransitions": transitions}
        if acquire:
            spec["acquireTime"] = spec["renewTime"]
        return spec

    async def try_acquire(self) -> bool:
        """One attempt: create the Lease, renew our own, or take over an expired one."""
        lease = await self.kube.get_or_none(self.path)
        if lease is None:
            body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": self.name, "namespace": self.namespace}, "spec": self._spec(True, 0)}
            try:
                await self.kube.request("POST", LEASES.path(self.namespace), body)
                return True
            except KubeError as exc:
                if exc.status == 409:
                    return False
                raise
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity")
        expired = _age(spec.get("renewTime")) > float(spec.get("leaseDurationSeconds") or self.lease_seconds)
        if holder != self.identity and not expired:
            return False
        transitions = int(spec.get("leaseTransitions") or 0) + (0 if holder == self.identity else 1)
        patch = {"metadata": {"resourceVersion": lease["metadata"]["resourceVersion"]},
                 "spec": self._spec(holder != self.identity, transitions)}
        try:
            await self.kube.merge_patch(self.path, patch)
            return True
        except KubeError as exc:
            if exc.status == 409:
                return False  # someone else wrote first
            raise

    async def acquire(self) -> None:
        """Wait until this replica holds the lease."""
        announced = False
        while True:
            try:
                if await self.try_acquire():
                    log.info("became the leader (lease %s/%s) as %s", self.namespace, self.name, self.identity)
                    return
            except KubeError as exc:
                log.warning("leader election failed (%s); retrying", exc)
            if not announced:
                log.info("standing by: another replica holds lease %s/%s", self.namespace, self.name)
                announced = True
            await asyncio.sleep(self.renew_every)

    async def keep(self) -> None:
        """Renew until cancelled; raise LostLeadership when the lease is lost."""
        last_renewed = time.monotonic()
        while True:
            await asyncio.sleep(self.renew_every)
            try:
                if await self.try_acquire():
                    last_renewed = time.monotonic()
                    continue
                raise LostLeadership(f"another replica took lease {self.namespace}/{self.name}")
            except KubeError as exc:
                if time.monotonic() - last_renewed > self.lease_seconds:
                    raise LostLeadership(f"could not renew lease {self.namespace}/{self.name}: {exc}") from None
                log.warning("renewing the lease failed (%s); retrying", exc)
