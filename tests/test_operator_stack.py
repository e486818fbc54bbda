"""Stack resources through a real Kopf operator loop (kmock stands in for the API server)."""

from __future__ import annotations

import uuid

from .builders import configmap, stack
from .operator_harness import STACKS, condition, eventually


async def test_stack_create_update_noop_and_delete(operator, cluster, store, db):
    await cluster.create(STACKS, stack("web", [configmap("a")], description="web tier", labels=["tier=web"],
                                       annotations={"owner": "team-a"}))
    obj = await cluster.wait_condition(STACKS, "web", "Ready", "True")
    stack_id = uuid.UUID(obj["status"]["stackId"])
    assert stack_id == uuid.UUID(obj["metadata"]["uid"])
    first = obj["status"]["deploymentObject"]
    assert first["resourceCount"] == 1 and len(first["checksum"]) == 64
    assert condition(obj, "Stalled") is None and condition(obj, "Reconciling") is None
    assert db.execute("SELECT name, description FROM stacks").fetchall() == [("default/web", "web tier")]
    assert db.execute("SELECT label FROM labels WHERE external_object_id = %s", (stack_id,)).fetchall() == [("tier=web",)]
    assert db.execute("SELECT key, value FROM annotations WHERE external_object_id = %s",
                      (stack_id,)).fetchall() == [("owner", "team-a")]
    assert "stackyard.dev/finalizer" in obj["metadata"]["finalizers"]
    annotations = obj["metadata"].get("annotations", {})
    assert not any(len(v) > 200 for v in annotations.values()), "no whole-object copies in annotations"

    # a change: a new deployment object with a higher sequence
    await cluster.patch(STACKS, "web", {"spec": {"resources": [configmap("a"), configmap("b")]}})
    obj = await cluster.wait_condition(STACKS, "web", "Ready", "True")
    second = obj["status"]["deploymentObject"]
    assert second["sequenceId"] > first["sequenceId"] and second["resourceCount"] == 2

    # a metadata-only change (no content change): no new deployment object
    await cluster.patch(STACKS, "web", {"metadata": {"labels": {"touched": "yes"}}})
    await cluster.patch(STACKS, "web", {"spec": {"description": "still web"}})
    await eventually(lambda: _description(db, "still web"))
    assert db.execute("SELECT count(*) FROM deployment_objects").fetchone()[0] == 2

    await cluster.delete(STACKS, "web")
    await cluster.wait_gone(STACKS, "web")
    rows = db.execute(
        "SELECT is_deletion_marker, deleted_at IS NULL FROM deployment_objects ORDER BY sequence_id"
    ).fetchall()
    assert rows == [(False, False), (False, False), (True, True)]
    assert db.execute("SELECT deleted_at IS NOT NULL FROM stacks").fetchone()[0] is True


async def _description(db, expected: str) -> bool:
    return db.execute("SELECT description FROM stacks").fetchone()[0] == expected


async def test_same_stack_applied_five_times_stores_one_deployment_object(operator, cluster, db):
    body = stack("api", [configmap("x", {"a": "1"}), configmap("y")])
    await cluster.create(STACKS, body)
    await cluster.wait_condition(STACKS, "api", "Ready", "True")
    for _ in range(5):
        # re-applying identical content, in another order, as a GitOps sync would
        await cluster.patch(STACKS, "api", {"spec": {"resources": list(reversed(body["spec"]["resources"]))}})
        await cluster.patch(STACKS, "api", {"spec": {"resources": body["spec"]["resources"]}})
    obj = await cluster.wait_condition(STACKS, "api", "Ready", "True")
    assert db.execute("SELECT count(*) FROM deployment_objects").fetchone()[0] == 1
    first_seq = obj["status"]["deploymentObject"]["sequenceId"]

    await cluster.patch(STACKS, "api", {"spec": {"resources": [configmap("x", {"a": "2"}), configmap("y")]}})

    async def second_version():
        obj = await cluster.get(STACKS, "api")
        return obj["status"]["deploymentObject"]["sequenceId"] > first_seq

    await eventually(second_version)
    seqs = [r[0] for r in db.execute("SELECT sequence_id FROM deployment_objects ORDER BY sequence_id")]
    assert len(seqs) == 2 and seqs[1] > seqs[0]
