"""kstatus' rules, one kind at a time, on object shapes as a real API server returns them."""

from __future__ import annotations

import copy

from stackyard.agent.health import object_health, stack_health

DEPLOYMENT = {
    "apiVersion": "apps/v1", "kind": "Deployment",
    "metadata": {"name": "web", "namespace": "apps", "generation": 3},
    "spec": {"replicas": 3, "progressDeadlineSeconds": 600},
    "status": {"observedGeneration": 3, "replicas": 3, "updatedReplicas": 3, "readyReplicas": 3,
               "availableReplicas": 3,
               "conditions": [
                   {"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable"},
                   {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable",
                    "message": 'ReplicaSet "web-5d4f" has successfully progressed.'}]},
}


def _with(obj: dict, **status) -> dict:
    changed = copy.deepcopy(obj)
    changed["status"].update(status)
    return changed


def test_deployment_available_mid_rollout_and_past_its_deadline():
    assert object_health(DEPLOYMENT).status == "Current"
    mid = _with(DEPLOYMENT, updatedReplicas=1, readyReplicas=2, availableReplicas=2, replicas=4)
    assert (object_health(mid).status, object_health(mid).message) == ("InProgress", "Updated: 1/3")
    unobserved = copy.deepcopy(DEPLOYMENT)
    unobserved["metadata"]["generation"] = 4
    assert object_health(unobserved).status == "InProgress"
    stuck = _with(mid, conditions=[{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
                                    "message": 'ReplicaSet "web-7c9" has timed out progressing.'}])
    assert (object_health(stuck).status, object_health(stuck).message) == ("Failed", "Progress deadline exceeded")


def test_statefulset_waits_for_ready_replicas_and_the_rolling_update():
    sts = {"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "db", "generation": 2},
           "spec": {"replicas": 2, "updateStrategy": {"type": "RollingUpdate"}},
           "status": {"observedGeneration": 2, "replicas": 2, "readyReplicas": 1, "currentReplicas": 2,
                      "updatedReplicas": 2, "currentRevision": "db-1", "updateRevision": "db-1"}}
    assert object_health(sts).message == "Ready: 1/2"
    assert object_health(_with(sts, readyReplicas=2, updateRevision="db-2")).status == "InProgress"
    assert object_health(_with(sts, readyReplicas=2)).status == "Current"


def test_daemonset_counts_scheduled_updated_available():
    ds = {"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "agent", "generation": 1},
          "status": {"observedGeneration": 1, "desiredNumberScheduled": 3, "currentNumberScheduled": 3,
                     "updatedNumberScheduled": 3, "numberAvailable": 2, "numberReady": 3}}
    assert object_health(ds).message == "Available: 2/3"
    assert object_health(_with(ds, numberAvailable=3)).status == "Current"


def test_replicaset_and_pods():
    rs = {"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {"name": "web-5d4f", "generation": 1},
          "spec": {"replicas": 2}, "status": {"observedGeneration": 1, "replicas": 2, "readyReplicas": 2,
                                              "availableReplicas": 1}}
    assert object_health(rs).message == "Available: 1/2"
    assert object_health(_with(rs, availableReplicas=2)).status == "Current"
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web-5d4f-x"},
           "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}}
    assert object_health(pod).status == "Current"
    crashing = _with(pod, conditions=[{"type": "Ready", "status": "False"}], containerStatuses=[
        {"name": "web", "ready": False, "restartCount": 5,
         "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 5m0s restarting failed container"}}}])
    assert (object_health(crashing).status, object_health(crashing).message) == ("Failed", "container web: CrashLoopBackOff")
    assert object_health(_with(pod, phase="Pending", conditions=[])).status == "InProgress"


def test_job_failed_complete_and_running():
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "migrate"}, "spec": {"completions": 1},
           "status": {"active": 1, "startTime": "2026-11-23T10:00:00Z"}}
    assert object_health(job).status == "InProgress"
    failed = _with(job, active=0, failed=6, conditions=[
        {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
         "message": "Job has reached the specified backoff limit"}])
    assert object_health(failed).status == "Failed" and "backoff limit" in object_health(failed).message
    done = _with(job, active=0, succeeded=1, conditions=[{"type": "Complete", "status": "True"}])
    assert object_health(done).status == "Current"


def test_pvc_pending_service_without_address_crd_established():
    pvc = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "data"},
           "spec": {"accessModes": ["ReadWriteOnce"]}, "status": {"phase": "Pending"}}
    assert object_health(pvc).message == "PVC is not Bound. phase: Pending"
    assert object_health(_with(pvc, phase="Bound")).status == "Current"
    lb = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "edge"}, "spec": {"type": "LoadBalancer"},
          "status": {"loadBalancer": {}}}
    assert object_health(lb).status == "InProgress"
    assert object_health(_with(lb, loadBalancer={"ingress": [{"ip": "203.0.113.7"}]})).status == "Current"
    crd = {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
           "metadata": {"name": "widgets.example.com"},
           "status": {"conditions": [{"type": "NamesAccepted", "status": "True"},
                                     {"type": "Established", "status": "True"}]}}
    assert object_health(crd).status == "Current"
    assert object_health(_with(crd, conditions=[{"type": "NamesAccepted", "status": "False",
                                                  "message": "kind Widget is already in use"}])).status == "Failed"


def test_custom_resources_by_the_generic_rules():
    widget = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w", "generation": 2},
              "status": {"observedGeneration": 2, "conditions": [
                  {"type": "Ready", "status": "False", "reason": "DependencyMissing", "message": "secret x not found"}]}}
    assert (object_health(widget).status, object_health(widget).message) == ("InProgress", "secret x not found")
    stalled = _with(widget, conditions=[{"type": "Stalled", "status": "True", "message": "invalid spec"}])
    assert object_health(stalled).status == "Failed"
    assert object_health({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}}).status == "Current"
    assert object_health(None).status == "NotFound"
    going = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "deletionTimestamp": "2026-11-23T10:00:00Z"}}
    assert object_health(going).status == "Terminating"


def test_a_stack_is_degraded_progressing_or_healthy_with_a_bounded_summary():
    current, progressing = object_health(DEPLOYMENT), object_health(_with(DEPLOYMENT, availableReplicas=1))
    failed = object_health(_with(DEPLOYMENT, conditions=[{"type": "Progressing", "status": "False",
                                                          "reason": "ProgressDeadlineExceeded"}]))
    assert stack_health([("a", current)])["health"] == "Healthy"
    assert stack_health([("a", current), ("b", progressing)])["health"] == "Progressing"
    summary = stack_health([(f"apps/v1/Deployment/x{i}", progressing) for i in range(20)] + [("z", failed)])
    assert summary["health"] == "Degraded" and summary["counts"] == {"InProgress": 20, "Failed": 1}
    assert len(summary["unhealthy"]) == 5 and summary["unhealthy"][0]["object"] == "z", "failures first, bounded"
