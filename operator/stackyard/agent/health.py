"""Health of applied objects by the rules of kstatus (sigs.k8s.io/cli-utils/pkg/kstatus/status), pure.

`object_health(obj)` gives one object's status: Current, InProgress, Failed,
Terminating or NotFound, with kstatus' message. Kind-specific rules for
Deployment, StatefulSet, DaemonSet, ReplicaSet, Job, Pod,
PersistentVolumeClaim, Service and CustomResourceDefinition; the generic rules
(observedGeneration, Ready/Reconciling/Stalled conditions) for anything else.
`stack_health(...)` folds a stack's objects into one health with a bounded
summary, the shape the agent reports (protocol.py, HEALTH_* names).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..protocol import (HEALTH_DEGRADED, HEALTH_HEALTHY, HEALTH_PROGRESSING, MAX_UNHEALTHY_IN_SUMMARY,
                        OBJECT_STATUSES)

CURRENT, IN_PROGRESS, FAILED, TERMINATING, NOT_FOUND = OBJECT_STATUSES


@dataclass(frozen=True)
class ObjectHealth:
    status: str
    message: str


def _status(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return obj.get("status") or {}


def _condition(obj: Mapping[str, Any], kind: str) -> Mapping[str, Any] | None:
    for condition in _status(obj).get("conditions") or ():
        if isinstance(condition, Mapping) and condition.get("type") == kind:
            return condition
    return None


def _is(obj: Mapping[str, Any], kind: str, value: str = "True") -> bool:
    condition = _condition(obj, kind)
    return condition is not None and condition.get("status") == value


def _int(value: Any, default: int = 0) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _generation_pending(obj: Mapping[str, Any]) -> ObjectHealth | None:
    """kstatus: a controller that has not observed the latest generation has not acted on it yet."""
    generation = (obj.get("metadata") or {}).get("generation")
    observed = _status(obj).get("observedGeneration")
    if isinstance(generation, int) and isinstance(observed, int) and observed < generation:
        return ObjectHealth(IN_PROGRESS, f"{obj.get('kind')} generation is {generation}, but latest observed"
                                         f" generation is {observed}")
    return None


def _generic(obj: Mapping[str, Any]) -> ObjectHealth:
    """Any kind without its own rule: observedGeneration, then Stalled, Reconciling and Ready conditions."""
    pending = _generation_pending(obj)
    if pending is not None:
        return pending
    for kind, status in (("Stalled", FAILED), ("Reconciling", IN_PROGRESS)):
        condition = _condition(obj, kind)
        if condition is not None and condition.get("status") == "True":
            return ObjectHealth(status, condition.get("message") or condition.get("reason") or kind)
    ready = _condition(obj, "Ready")
    if ready is not None and ready.get("status") == "False":
        return ObjectHealth(IN_PROGRESS, ready.get("message") or ready.get("reason") or "Ready is False")
    return ObjectHealth(CURRENT, "Resource is current")


def _deployment(obj: Mapping[str, Any]) -> ObjectHealth:
    pending = _generation_pending(obj)
    if pending is not None:
        return pending
    status, spec = _status(obj), obj.get("spec") or {}
    wanted = _int(spec.get("replicas"), 1)
    progressing = _condition(obj, "Progressing")
    if progressing is not None and progressing.get("reason") == "ProgressDeadlineExceeded":
        return ObjectHealth(FAILED, "Progress deadline exceeded")
    updated, replicas = _int(status.get("updatedReplicas")), _int(status.get("replicas"))
    ready, available = _int(status.get("readyReplicas")), _int(status.get("availableReplicas"))
    if wanted > updated:
        return ObjectHealth(IN_PROGRESS, f"Updated: {updated}/{wanted}")
    if replicas > updated:
        return ObjectHealth(IN_PROGRESS, f"Pending termination: {replicas - updated}")
    if wanted > available:
        return ObjectHealth(IN_PROGRESS, f"Available: {available}/{wanted}")
    if wanted > ready:
        return ObjectHealth(IN_PROGRESS, f"Ready: {ready}/{wanted}")
    if _is(obj, "Available", "False"):
        return ObjectHealth(IN_PROGRESS, "Deployment not Available")
    return ObjectHealth(CURRENT, f"Deployment is available. Replicas: {replicas}")


def _statefulset(obj: Mapping[str, Any]) -> ObjectHealth:
    pending = _generation_pending(obj)
    if pending is not None:
        return pending
    status, spec = _status(obj), obj.get("spec") or {}
    if (spec.get("updateStrategy") or {}).get("type") == "OnDelete":
        return ObjectHealth(CURRENT, "StatefulSet is using the OnDelete update strategy")
    wanted = _int(spec.get("replicas"), 1)
    ready, current = _int(status.get("readyReplicas")), _int(status.get("currentReplicas"))
    if wanted > ready:
        return ObjectHealth(IN_PROGRESS, f"Ready: {ready}/{wanted}")
    partition = _int(((spec.get("updateStrategy") or {}).get("rollingUpdate") or {}).get("partition"))
    if partition:
        updated = _int(status.get("updatedReplicas"))
        if updated < wanted - partition:
            return ObjectHealth(IN_PROGRESS, f"updated: {updated}/{wanted - partition}")
        return ObjectHealth(CURRENT, f"Partitioned roll out complete. updated: {updated}")
    if wanted > current:
        return ObjectHealth(IN_PROGRESS, f"current: {current}/{wanted}")
    if status.get("updateRevision") != status.get("currentRevision"):
        return ObjectHealth(IN_PROGRESS, f"Waiting for the rolling update to complete: {current}/{wanted}")
    return ObjectHealth(CURRENT, f"All replicas scheduled as expected. Replicas: {ready}")


def _daemonset(obj: Mapping[str, Any]) -> ObjectHealth:
    pending = _generation_pending(obj)
    if pending is not None:
        return pending
    status = _status(obj)
    desired = _int(status.get("desiredNumberScheduled"))
    for key, label in (("currentNumberScheduled", "Current"), ("updatedNumberScheduled", "Updated"),
                       ("numberAvailable", "Available"), ("numberReady", "Ready")):
        have = _int(status.get(key))
        if desired > have:
            return ObjectHealth(IN_PROGRESS, f"{label}: {have}/{desired}")
    return ObjectHealth(CURRENT, f"All replicas scheduled as expected. Replicas: {desired}")


def _replicaset(obj: Mapping[str, Any]) -> ObjectHealth:
    pending = _generation_pending(obj)
    if pending is not None:
        return pending
    status, spec = _status(obj), obj.get("spec") or {}
    wanted = _int(spec.get("replicas"), 1)
    if _is(obj, "ReplicaFailure"):
        return ObjectHealth(IN_PROGRESS, "Replica Failure condition. Check Pods")
    for key, label in (("availableReplicas", "Available"), ("readyReplicas", "Ready")):
        have = _int(status.get(key))
        if wanted > have:
            return ObjectHealth(IN_PROGRESS, f"{label}: {have}/{wanted}")
    if _int(status.get("replicas")) > wanted:
        return ObjectHealth(IN_PROGRESS, f"Pending termination: {_int(status.get('replicas')) - wanted}")
    return ObjectHealth(CURRENT, f"ReplicaSet is available. Replicas: {wanted}")


def _job(obj: Mapping[str, Any]) -> ObjectHealth:
    status = _status(obj)
    failed = _condition(obj, "Failed")
    if failed is not None and failed.get("status") == "True":
        return ObjectHealth(FAILED, f"Job Failed. failed: {_int(status.get('failed'))}"
                                    f"{': ' + failed['message'] if failed.get('message') else ''}")
    if _is(obj, "Complete"):
        return ObjectHealth(CURRENT, "Job Completed. succeeded: "
                                     f"{_int(status.get('succeeded'))}/{_int((obj.get('spec') or {}).get('completions'), 1)}")
    return ObjectHealth(IN_PROGRESS, f"Job in progress. success: {_int(status.get('succeeded'))},"
                                     f" active: {_int(status.get('active'))}, failed: {_int(status.get('failed'))}")


CRASH_REASONS = ("CrashLoopBackOff", "ImagePullBackOff", "ErrImagePull", "CreateContainerConfigError",
                 "InvalidImageName")


def _pod(obj: Mapping[str, Any]) -> ObjectHealth:
    status = _status(obj)
    phase = status.get("phase")
    if phase == "Succeeded":
        return ObjectHealth(CURRENT, "Pod has completed successfully")
    if phase == "Failed":
        return ObjectHealth(FAILED, "Pod has completed, but not successfully")
    for container in status.get("containerStatuses") or ():
        waiting = ((container or {}).get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in CRASH_REASONS:
            return ObjectHealth(FAILED, f"container {container.get('name')}: {waiting['reason']}")
    if phase == "Running" and _is(obj, "Ready"):
        return ObjectHealth(CURRENT, "Pod is Ready")
    return ObjectHealth(IN_PROGRESS, f"Pod phase is {phase or 'unknown'}, not Ready yet")


def _pvc(obj: Mapping[str, Any]) -> ObjectHealth:
    phase = _status(obj).get("phase")
    if phase == "Bound":
        return ObjectHealth(CURRENT, "PVC is Bound")
    return ObjectHealth(IN_PROGRESS, f"PVC is not Bound. phase: {phase or 'unknown'}")


def _service(obj: Mapping[str, Any]) -> ObjectHealth:
    if (obj.get("spec") or {}).get("type") == "LoadBalancer":
        if not ((_status(obj).get("loadBalancer") or {}).get("ingress")):
            return ObjectHealth(IN_PROGRESS, "Service of type LoadBalancer has no external address yet")
    return ObjectHealth(CURRENT, "Service is ready")


def _crd(obj: Mapping[str, Any]) -> ObjectHealth:
    names = _condition(obj, "NamesAccepted")
    if names is not None and names.get("status") == "False":
        return ObjectHealth(FAILED, f"CRD names not accepted: {names.get('message') or names.get('reason')}")
    if _is(obj, "Established"):
        return ObjectHealth(CURRENT, "CRD is established")
    return ObjectHealth(IN_PROGRESS, "CRD is not established yet")


RULES: dict[tuple[str, str], Callable[[Mapping[str, Any]], ObjectHealth]] = {
    ("apps", "Deployment"): _deployment,
    ("apps", "StatefulSet"): _statefulset,
    ("apps", "DaemonSet"): _daemonset,
    ("apps", "ReplicaSet"): _replicaset,
    ("batch", "Job"): _job,
    ("", "Pod"): _pod,
    ("", "PersistentVolumeClaim"): _pvc,
    ("", "Service"): _service,
    ("apiextensions.k8s.io", "CustomResourceDefinition"): _crd,
}


def object_health(obj: Mapping[str, Any] | None) -> ObjectHealth:
    """kstatus' status of one live object (None: it does not exist)."""
    if obj is None:
        return ObjectHealth(NOT_FOUND, "Resource not found")
    if (obj.get("metadata") or {}).get("deletionTimestamp"):
        return ObjectHealth(TERMINATING, "Resource scheduled for deletion")
    group = str(obj.get("apiVersion") or "").rpartition("/")[0]
    rule = RULES.get((group, str(obj.get("kind"))), _generic)
    return rule(obj)


def stack_health(objects: Sequence[tuple[str, ObjectHealth]]) -> dict[str, Any]:
    """One stack's health and bounded summary from (object reference, health) pairs.

    Degraded when any object Failed; Progressing when any is not Current yet; else Healthy.
    """
    counts = {status: 0 for status in OBJECT_STATUSES}
    for _ref, one in objects:
        counts[one.status] += 1
    unhealthy = [{"object": ref, "status": h.status, "message": h.message[:300]}
                 for ref, h in sorted(objects, key=lambda o: (o[1].status != FAILED, o[0])) if h.status != CURRENT]
    if counts[FAILED]:
        overall = HEALTH_DEGRADED
    elif len(objects) > counts[CURRENT]:
        overall = HEALTH_PROGRESSING
    else:
        overall = HEALTH_HEALTHY
    return {"health": overall, "counts": {k: v for k, v in counts.items() if v},
            "unhealthy": unhealthy[:MAX_UNHEALTHY_IN_SUMMARY]}
