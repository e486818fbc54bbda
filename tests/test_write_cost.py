"""What one Stack costs the API server: every write is a watch event for every watcher (Kopf, Argo CD, Flux).
A new Stack is two writes (Kopf's finalizer, then one status patch carrying Kopf's own state); a change is
one; an unchanged resync none. Counted as the emulator served them, with the operator's 2 s resync."""

from __future__ import annotations

import asyncio

from .builders import configmap
from .operator_harness import STACKS, eventually

PATH = "/stacks/web"


def writes(kube_server) -> int:
    return sum(kube_server.emulator.count(m, PATH) for m in ("PATCH", "PUT", "POST"))


async def settled(kube_server, seconds: float = 1.0) -> int:
    """The write count once it has not moved for `seconds` (the operator is quiet)."""
    last = writes(kube_server)
    while True:
        await asyncio.sleep(seconds)
        now = writes(kube_server)
        if now == last:
            return now
        last = now


async def test_a_new_stack_costs_two_writes_a_change_one_and_a_resync_none(operator, cluster, kube_server):
    await cluster.create(STACKS, {"metadata": {"name": "web"}, "spec": {"resources": [configmap("a")]}})
    await cluster.wait_condition(STACKS, "web", "Ready", "True")
    new = await settled(kube_server)
    assert new == 2, "the finalizer, then one status patch with Kopf's state"

    await cluster.patch(STACKS, "web", {"spec": {"resources": [configmap("a", {"v": "2"})]}})

    async def observed():
        obj = await cluster.get(STACKS, "web")
        return obj["status"].get("observedGeneration") == obj["metadata"]["generation"] == 2

    await eventually(observed)
    changed = await settled(kube_server)
    assert changed - new - 1 == 1, "the spec patch itself, then one status patch"

    await asyncio.sleep(5)  # more than two resync intervals of the test operator (2 s), nothing changing
    assert await settled(kube_server) == changed, "an unchanged resync writes nothing"
    stored = (await cluster.get(STACKS, "web"))["status"]["kopf"]
    assert set(stored) == {"lastHandledDigest"}, "Kopf's state lives in the status, no copy of the spec"


def test_an_object_last_handled_by_the_annotation_storage_is_not_reconciled_again():
    import kopf

    from stackyard.controller.storage import CHANGED_MARKER, DigestDiffBaseStorage, StatusDigestDiffBaseStorage

    raw = {"apiVersion": "stackyard.dev/v1alpha1", "kind": "Stack",
           "metadata": {"name": "web", "namespace": "default", "annotations": {}}, "spec": {"resources": []}}
    old, new = DigestDiffBaseStorage("stackyard.dev"), StatusDigestDiffBaseStorage("stackyard.dev")
    patch = kopf.Patch()
    old.store(body=kopf.Body(raw), patch=patch, essence=old.build(body=kopf.Body(raw)))
    raw["metadata"]["annotations"].update(patch["metadata"]["annotations"])
    fetched = new.fetch(body=kopf.Body(raw))
    assert fetched == new.build(body=kopf.Body(raw)), "upgraded: the annotation's digest still counts"

    patch = kopf.Patch()
    new.store(body=kopf.Body(raw), patch=patch, essence=new.build(body=kopf.Body(raw)))
    raw["status"] = patch["status"]
    raw["spec"]["resources"] = [{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"}}]
    assert CHANGED_MARKER in new.fetch(body=kopf.Body(raw)), "a spec change is seen through the status digest"
