"""The agent loop: heartbeat, long-poll the desired state, plan (planner.py), delete then apply, report events.

Rules (docs/architecture.md, "Agent"): server-side apply with field manager `stackyard-agent`,
Namespaces and CRDs first; every object labelled with its stack and annotated
with its deployment object; a per-stack inventory ConfigMap in the agent's
namespace; pruning only what an inventory lists, never an object that a live
stack's current version claims; failures retried with capped exponential
backoff, one event per deployment object per attempt; periodic re-apply
against drift, reporting what another field manager changed (DRIFT events);
the health of each applied stack by kstatus' rules, polled with backoff until
healthy and reported only when it changes (HEALTH events). No broker error,
cluster error or bad YAML ends the loop.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

from ..backoff import Backoff
from ..kube import CALL_ERRORS, DynamicApiError, Kube, Ref, describe
from ..protocol import (
    DRIFT_EVENT,
    HEALTH_EVENT,
    HEALTH_HEALTHY,
    MAX_DRIFTED_IN_EVENT,
    MAX_MESSAGE_LENGTH,
    Event,
    Heartbeat,
    WireStack,
    apply_rank,
    stacks_of,
)
from ..metrics import AgentMetrics
from ..tasks import forever
from .broker import BrokerClient, BrokerError
from .drift import drift
from .health import object_health, stack_health
from .manifests import INVENTORY_LABEL, BadManifest, Inventory, ObjectRef, decorate, inventory_name, ref_of, refs
from .planner import Apply, Deletion, attempt_key, plan

log = logging.getLogger(__name__)

FIELD_MANAGER = "stackyard-agent"


def left_behind(left: list[str]) -> str:
    """The part of an event's message naming objects an impersonated account may not delete."""
    if not left:
        return ""
    more = f" and {len(left) - 3} more" if len(left) > 3 else ""
    return f"; left in place (its service account may not delete them): {', '.join(left[:3])}{more}"


class ApplyFailed(Exception):
    """Applying or deleting one object failed; the message names the object and the API server's answer
    (`status`, when it gave one)."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


FORBIDDEN = 403


@dataclass
class AgentSettings:
    namespace: str = "stackyard-system"
    default_namespace: str = "default"
    heartbeat_interval: float = 10.0
    poll_wait: int = 30
    resync_interval: float = 300.0
    retry_base: float = 1.0
    retry_max: float = 60.0
    crd_timeout: float = 60.0
    deletion_grace: float = 10.0
    health_poll_max: float = 30.0  # longest wait between health checks of a stack that is not healthy yet


@dataclass
class StackAgent:
    """One agent's state; `run()` is the whole loop."""

    broker: BrokerClient
    kube: Kube
    settings: AgentSettings
    metrics: AgentMetrics
    etag: str | None = None
    desired: list[WireStack] = field(default_factory=list)
    backoffs: dict[str, Backoff] = field(default_factory=dict)
    reported_markers: set[str] = field(default_factory=set)
    dead_since: dict[str, float] = field(default_factory=dict)
    outbox: list[Event] = field(default_factory=list)
    last_full_apply: float = field(default_factory=time.monotonic)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    health_due: dict[str, float] = field(default_factory=dict)  # deployment object -> next check (monotonic)
    health_backoffs: dict[str, Backoff] = field(default_factory=dict)
    held_stacks: int | None = None  # stacks with an inventory in the cluster at the last sync (None: not synced)
    reported_health: dict[str, dict[str, Any]] = field(default_factory=dict)  # deployment object -> last summary

    # The loop ------------------------------------------------------------------

    async def run(self) -> None:
        """Heartbeat and sync until cancelled; neither task ends on an unexpected error (`tasks.forever`)."""
        errors = self.metrics.task_errors_total
        beats = asyncio.create_task(forever("heartbeat", self._heartbeat, self.settings.heartbeat_interval, log,
                                            errors.labels("heartbeat").inc), name="heartbeat")
        unreachable = Backoff(self.settings.retry_base, self.settings.retry_max)
        try:
            await forever("sync", lambda: self._sync(unreachable), 0.0, log, errors.labels("sync").inc,
                          Backoff(self.settings.retry_base, self.settings.retry_max))
        finally:
            beats.cancel()

    def heartbeat_report(self) -> Heartbeat:
        """What a heartbeat says: alive, and how many stacks the agent still holds in its cluster (the operator
        waits for none before it lets a deleted Agent go)."""
        return Heartbeat("ACTIVE", self.held_stacks)

    async def _heartbeat(self) -> float | None:
        try:
            await self.broker.heartbeat(self.heartbeat_report())
        except BrokerError as exc:
            self.metrics.broker_errors_total.labels("heartbeat").inc()
            delay = max(self.settings.heartbeat_interval, exc.retry_after or 0.0)
            log.warning("heartbeat failed (%s); next in %.0fs", exc, delay)
            return delay
        return None

    async def _sync(self, unreachable: Backoff) -> float:
        """One long-poll and one sync cycle; the broker's and the cluster's errors wait with backoff."""
        try:
            answer = await self.broker.target_state(self.etag, self._wait_seconds())
            unreachable.reset()
            if answer.changed and answer.document is not None:
                self.etag = answer.etag
                self.desired = stacks_of(answer.document)
            await self.sync_once()
            self.ready.set()
            return 0.0
        except BrokerError as exc:
            self.metrics.broker_errors_total.labels("target-state").inc()
            delay = max(unreachable.next_delay(), exc.retry_after or 0.0)
            log.warning("cannot reach the broker (%s); retrying in %.1fs", exc, delay)
            return delay
        except CALL_ERRORS as exc:  # the target cluster's API server (listing inventories)
            delay = unreachable.next_delay()
            log.warning("cannot reach the cluster (%s); retrying in %.1fs", describe(exc), delay)
            return delay

    def _wait_seconds(self) -> int:
        """Long-poll until the next retry, deletion, health check or drift repair is due: rounded up (the API
        takes whole seconds), and never under one second, so a timer that is due, or stays due because its work
        failed, costs at most one request a second instead of a loop of `wait=0` polls."""
        now = time.monotonic()
        due = [b.next_at for b in self.backoffs.values() if b.attempts] + [
            self.last_full_apply + self.settings.resync_interval
        ] + [since + self.settings.deletion_grace for since in self.dead_since.values()] + list(self.health_due.values())
        return max(1, min(self.settings.poll_wait, math.ceil(min(due) - now)))

    # One cycle ------------------------------------------------------------------

    async def sync_once(self) -> None:
        """Plan (a pure function of the desired state and the inventories), then carry the plan out."""
        started = time.monotonic()
        drift_due = started - self.last_full_apply >= self.settings.resync_interval
        inventories = await self._inventories()
        decided = plan(self.desired, inventories, started, self.dead_since, self.backoffs,
                       self.reported_markers, self.settings.deletion_grace, drift_due, self.health_due)
        held = set(inventories)
        for deletion in decided.deletions:  # deletions before applies
            if await self._delete_dead_stack(deletion):
                held.discard(deletion.stack_id)
        for marker in decided.nothing_to_remove:
            self._event(marker, "DELETE", "SUCCESS", "nothing to remove")
            self.reported_markers.add(marker.deployment_object_id)
        for apply in decided.applies:
            await self._apply_stack(apply)
            held.add(apply.stack.stack_id)  # its inventory is written before anything is applied
        self.held_stacks = len(held)
        for stack, objects in decided.health_checks:
            await self._check_health(stack, objects)
        self._forget_health(s.deployment_object_id for s in self.desired)
        current = {attempt_key(s) for s in self.desired}
        for stale in [key for key in self.backoffs if key not in current]:
            del self.backoffs[stale]
        if drift_due:
            self.last_full_apply = time.monotonic()
        await self._flush_events()
        self.metrics.sync_duration_seconds.observe(time.monotonic() - started)
        self.metrics.last_sync_timestamp_seconds.set(time.time())

    async def _inventories(self) -> dict[str, Inventory]:
        """This agent's inventories: labelled ConfigMaps in its own namespace, listed by label selector."""
        items = await self.kube.list("v1", "ConfigMap", self.settings.namespace, label_selector=f"{INVENTORY_LABEL}=true")
        found = {}
        for item in items:
            inventory = Inventory.from_configmap(item)
            if inventory is not None:
                found[inventory.stack_id] = inventory
        return found

    async def _delete_dead_stack(self, deletion: Deletion) -> bool:
        """Remove what a dead stack left (the planner already spared what live stacks claim); True when done."""
        inventory, marker = deletion.inventory, deletion.marker
        try:  # as whom they were applied: a deletion never uses more rights than the apply had
            removed, left = await self._delete_objects(deletion.objects, inventory.applied_as or None)
            await self.kube.delete(Ref("v1", "ConfigMap", inventory_name(deletion.stack_id), self.settings.namespace))
        except (ApplyFailed, *CALL_ERRORS) as exc:  # type: ignore[misc]  # a tuple of exception types
            message = str(exc) if isinstance(exc, ApplyFailed) else describe(exc)
            if marker is not None:
                self._event(marker, "DELETE", "FAILURE", f"removing the stack's objects failed: {message}")
            log.warning("removing objects of stack %s failed, will retry: %s", inventory.stack_name or deletion.stack_id,
                        message)
            return False
        reason = "deleted" if marker is not None else "no longer targeted to this agent"
        outcome = f"removed {removed} objects" + left_behind(left)
        log.info("stack %s is %s: %s", inventory.stack_name or deletion.stack_id, reason, outcome)
        self.dead_since.pop(deletion.stack_id, None)
        if marker is not None:
            self._event(marker, "DELETE", "SUCCESS", outcome)
            self.reported_markers.add(marker.deployment_object_id)
        return True

    async def _apply_stack(self, apply: Apply) -> None:
        stack, objects, inventory = apply.stack, apply.objects, apply.inventory
        try:
            if isinstance(objects, BadManifest):
                raise objects
            new_refs = refs(objects)
            old_refs = inventory.objects if inventory else frozenset()
            await self._write_inventory(stack, old_refs | new_refs, applied=False)
            pruned, left = await self._delete_objects(apply.prune, stack.service_account_user)
            drifted, refused, never_created = [], [], set()
            for obj in objects:  # one object refused (RBAC, admission) does not stop the others
                try:
                    found = await self._apply_object(stack, obj, compare=apply.repair)
                except ApplyFailed as exc:
                    refused.append(str(exc))
                    if exc.status == FORBIDDEN and ref_of(obj) not in old_refs:
                        never_created.add(ref_of(obj))  # refused its creation: nothing of ours to prune later
                    continue
                if found is not None:
                    drifted.append(found)
                if obj["kind"] == "CustomResourceDefinition":
                    await self._wait_established(obj)
            await self._write_inventory(stack, new_refs - never_created, applied=not refused)
            if refused:
                more = f" (and {len(refused) - 3} more)" if len(refused) > 3 else ""
                raise ApplyFailed(f"{len(objects) - len(refused)}/{len(objects)} objects applied; "
                                  + "; ".join(refused[:3]) + more)
        except (ApplyFailed, BadManifest) as exc:
            self._failed(stack, exc)
            return
        except CALL_ERRORS as exc:  # the inventory could not be written
            self._failed(stack, ApplyFailed(f"inventory: {describe(exc)}"))
            return
        self.backoffs.pop(attempt_key(stack), None)
        if drifted:
            self._report_drift(stack, drifted)
        if apply.repair:  # a drift repair of a version already reported applied: no new APPLY event
            if self.health_due.get(stack.deployment_object_id, 0.0) <= time.monotonic():
                await self._check_health(stack, objects)  # a repair cycle does not skip a health check due
            return
        self.metrics.applies_total.labels("success").inc()
        message = f"applied {len(objects)} objects" + (f", pruned {pruned}" if pruned else "") + left_behind(left)
        log.info("stack %s sequence %d: %s", stack.stack_name, stack.sequence_id, message)
        self._event(stack, "APPLY", "SUCCESS", message)
        self.health_due.pop(stack.deployment_object_id, None)
        self.health_backoffs.pop(stack.deployment_object_id, None)
        await self._check_health(stack, objects)

    def _report_drift(self, stack: WireStack, drifted: list[dict[str, Any]]) -> None:
        for entry in drifted:
            self.metrics.drift_corrections_total.labels(entry["kind"]).inc()
        described = "; ".join(f"{d['object']} ({', '.join(d['fields'][:3])})"
                              + (f" by {', '.join(d['managers'])}" if d["managers"] else "") for d in drifted[:3])
        message = f"Drifted: {len(drifted)} objects changed or removed by someone else, applied again: {described}"
        log.info("stack %s sequence %d: %s", stack.stack_name, stack.sequence_id, message)
        details = {"drifted": [{"object": d["object"], "managers": d["managers"][:10], "fields": d["fields"][:20]}
                               for d in drifted[:MAX_DRIFTED_IN_EVENT]]}
        self._event(stack, DRIFT_EVENT, "SUCCESS", message, details)

    # Health ------------------------------------------------------------------------------

    async def _check_health(self, stack: WireStack, objects: list[dict[str, Any]]) -> None:
        """Read the stack's objects, fold kstatus' rules into one health, report it when it changed."""
        do_id = stack.deployment_object_id
        results = []
        self.metrics.health_checks_total.inc()
        try:
            for obj in objects:
                ref = ref_of(obj)
                resource = await self.kube.resource(ref.api_version, ref.kind)
                namespace = (ref.namespace or self.settings.default_namespace) if resource.namespaced else None
                live = await self.kube.get(Ref(ref.api_version, ref.kind, ref.name, namespace),
                                           as_user=stack.service_account_user)
                results.append((f"{ref.api_version}/{ref}", object_health(live)))
        except CALL_ERRORS as exc:
            log.info("health of stack %s: cannot read its objects (%s); will check again", stack.stack_name,
                     describe(exc))
            self._schedule_health(do_id, healthy=False)
            return
        summary = stack_health(results)
        if summary != self.reported_health.get(do_id):
            before = (self.reported_health.get(do_id) or {}).get("health")
            self.reported_health[do_id] = summary
            current = len(results) - sum(1 for _, h in results if h.status != "Current")
            first = summary["unhealthy"][0] if summary["unhealthy"] else None
            message = f"{summary['health']}: {current}/{len(results)} objects current" + (
                f"; {first['object']}: {first['message']}" if first else "")
            if before != summary["health"]:
                log.info("stack %s sequence %d: %s", stack.stack_name, stack.sequence_id, message)
            self._event(stack, HEALTH_EVENT, "SUCCESS" if summary["health"] == HEALTH_HEALTHY else "FAILURE",
                        message, summary)
        self._schedule_health(do_id, healthy=summary["health"] == HEALTH_HEALTHY)

    def _schedule_health(self, do_id: str, healthy: bool) -> None:
        """Healthy: check again at the drift interval. Not yet: again soon, backing off to health_poll_max."""
        if healthy:
            self.health_backoffs.pop(do_id, None)
            self.health_due[do_id] = time.monotonic() + self.settings.resync_interval
            return
        backoff = self.health_backoffs.setdefault(do_id, Backoff(self.settings.retry_base, self.settings.health_poll_max))
        self.health_due[do_id] = time.monotonic() + backoff.next_delay()

    def _forget_health(self, desired: Any) -> None:
        keep = set(desired)
        for table in (self.health_due, self.health_backoffs, self.reported_health):
            for do_id in [d for d in table if d not in keep]:
                del table[do_id]

    def _failed(self, stack: WireStack, exc: Exception) -> None:
        backoff = self.backoffs.setdefault(attempt_key(stack),
                                           Backoff(self.settings.retry_base, self.settings.retry_max))
        delay = backoff.next_delay()
        self.metrics.applies_total.labels("failure").inc()
        log.warning("stack %s sequence %d failed (attempt %d, retry in %.0fs): %s",
                    stack.stack_name, stack.sequence_id, backoff.attempts, delay, exc)
        self._event(stack, "APPLY", "FAILURE", f"attempt {backoff.attempts}: {exc}")

    # Kubernetes ---------------------------------------------------------------------

    async def _apply_object(self, stack: WireStack, obj: dict[str, Any], compare: bool = False) -> dict[str, Any] | None:
        """Apply one object; with `compare`, first read it and return its drift (None: none)."""
        ref = ref_of(obj)
        found = None
        try:
            resource = await self.kube.resource(ref.api_version, ref.kind)
            body = decorate(obj, stack.stack_id, stack.deployment_object_id, stack.checksum)
            if resource.namespaced:
                body["metadata"]["namespace"] = ref.namespace or self.settings.default_namespace
            as_user = stack.service_account_user  # the Agent's spec.impersonate for the stack's namespace
            if compare:
                live = await self.kube.get(Ref(ref.api_version, ref.kind, ref.name, body["metadata"].get("namespace")),
                                           as_user=as_user)
                changed = drift(body, live, FIELD_MANAGER)
                if changed is not None:
                    found = {"object": f"{ref.api_version}/{ref}", "kind": ref.kind, **changed}
            await self.kube.apply(body, FIELD_MANAGER, as_user=as_user)
        except CALL_ERRORS as exc:
            reason = describe(exc)
            if "cannot impersonate" in reason:
                reason += (" (the agent's service account needs the verb impersonate on it: the chart's"
                           " agent.impersonation.serviceAccounts; README, \"Multi-tenancy\")")
            raise ApplyFailed(f"{ref}: {reason}", getattr(exc, "status", None)) from None
        self.metrics.objects_applied_total.inc()
        return found

    async def _delete_objects(self, doomed: frozenset[ObjectRef] | set[ObjectRef],
                              as_user: str | None = None) -> tuple[int, list[str]]:
        """Delete objects (reverse of apply order, as `as_user` when given); returns how many existed, and the
        objects an impersonated account may not delete: they are left where they are (least privilege: the
        agent does not use its own rights instead) and reported, not retried forever."""
        removed, left = 0, []
        order = sorted(doomed, key=lambda r: apply_rank(r.kind), reverse=True)
        for ref in order:
            namespace = ref.namespace or self.settings.default_namespace
            try:
                deleted = await self.kube.delete(Ref(ref.api_version, ref.kind, ref.name, namespace), as_user=as_user)
            except DynamicApiError as exc:
                if exc.status == FORBIDDEN and as_user:
                    left.append(str(ref))
                    continue
                raise ApplyFailed(f"deleting {ref}: {describe(exc)}", exc.status) from None
            except CALL_ERRORS as exc:
                raise ApplyFailed(f"deleting {ref}: {describe(exc)}") from None
            if deleted:
                removed += 1
                self.metrics.objects_pruned_total.inc()
        if left:
            log.warning("left %d objects in place that %s may not delete: %s", len(left), as_user, ", ".join(left[:5]))
        return removed, left

    async def _write_inventory(self, stack: WireStack, objects: frozenset[ObjectRef], applied: bool) -> None:
        inventory = Inventory(stack.stack_id, stack.stack_name, stack.deployment_object_id, stack.checksum,
                              applied, frozenset(objects), stack.service_account_user or "")
        await self.kube.apply(inventory.configmap(self.settings.namespace), FIELD_MANAGER)

    async def _wait_established(self, crd: dict[str, Any]) -> None:
        """Wait until a CRD just applied is Established and its kind is served."""
        deadline = time.monotonic() + self.settings.crd_timeout
        group, kind = crd.get("spec", {}).get("group"), crd.get("spec", {}).get("names", {}).get("kind")
        versions = [v.get("name") for v in crd.get("spec", {}).get("versions", []) if v.get("served", True)]
        while time.monotonic() < deadline:
            try:
                await self.kube.forget_discovery()
                await self.kube.resource(f"{group}/{versions[0]}", kind)
                live = await self.kube.get(Ref("apiextensions.k8s.io/v1", "CustomResourceDefinition",
                                               crd["metadata"]["name"]))
                conditions = ((live or {}).get("status") or {}).get("conditions") or []
                if not conditions or any(c.get("type") == "Established" and c.get("status") == "True" for c in conditions):
                    return
            except (*CALL_ERRORS, IndexError):  # type: ignore[misc]  # a tuple of exception types
                pass
            await asyncio.sleep(0.5)
        raise ApplyFailed(f"CRD {crd['metadata']['name']} was not established in {self.settings.crd_timeout:.0f}s")

    # Events ---------------------------------------------------------------------------

    def _event(self, stack: WireStack, event_type: str, status: str, message: str,
               details: dict[str, Any] | None = None) -> None:
        self.outbox.append(Event(stack.deployment_object_id, event_type, status, message[:MAX_MESSAGE_LENGTH], details,
                                 stack.checksum))
        del self.outbox[:-1000]  # bounded while the broker is unreachable

    async def _flush_events(self) -> None:
        if not self.outbox:
            return
        batch, self.outbox = self.outbox, []
        try:
            await self.broker.post_events(batch)
        except BrokerError as exc:
            if exc.status in (400, 404):
                log.warning("the broker refused %d events: %s", len(batch) - exc.sent, exc)
                return  # e.g. the stack is no longer targeted: these events have no home
            self.metrics.broker_errors_total.labels("events").inc()
            self.outbox = batch[exc.sent:] + self.outbox
            del self.outbox[:-1000]
            log.warning("reporting %d events failed, will retry: %s", len(batch) - exc.sent, exc)
