"""The async data-access layer the operator and the API stand on."""

from __future__ import annotations

import json

import asyncio
import uuid
from datetime import timedelta

import pytest

from stackyard.store import Conflict, EventIn, NotFound, NotTargeted, sha256_hex


def metadata(db, object_id) -> tuple[list[str], dict[str, str]]:
    labels = [r[0] for r in db.execute("SELECT label FROM labels WHERE external_object_id = %s ORDER BY label",
                                       (object_id,))]
    return labels, dict(db.execute("SELECT key, value FROM annotations WHERE external_object_id = %s", (object_id,)))


async def test_upsert_stack_replaces_labels_and_annotations(store, db):
    sid = uuid.uuid4()
    await store.upsert_stack(sid, "team-a/web", "the web tier", ["tier=web", "env=prod"], {"owner": "a", "cost": "1"})
    assert metadata(db, sid) == (["env=prod", "tier=web"], {"cost": "1", "owner": "a"})
    await store.upsert_stack(sid, "team-a/web", "changed", ["tier=web"], {"owner": "b"})
    assert metadata(db, sid) == (["tier=web"], {"owner": "b"})
    assert db.execute("SELECT description FROM stacks WHERE id = %s", (sid,)).fetchone()[0] == "changed"
    assert db.execute("SELECT count(*) FROM stacks").fetchone()[0] == 1


async def test_upsert_stack_supersedes_a_stale_live_stack_of_the_same_name(store, db):
    old, new = uuid.uuid4(), uuid.uuid4()
    await store.upsert_stack(old, "team-a/web", None)
    await store.emit_deployment_object(old, "a: 1\n")
    await store.upsert_stack(new, "team-a/web", None)
    assert await store.live_stack_id("team-a/web") == new
    marker = await store.latest_deployment_object(old)
    assert marker.is_deletion_marker


async def test_upsert_of_a_deleted_stack_is_refused(store):
    sid = uuid.uuid4()
    await store.upsert_stack(sid, "a/b", None)
    assert await store.soft_delete_stack(sid) is True
    assert await store.soft_delete_stack(sid) is False
    with pytest.raises(Conflict):
        await store.upsert_stack(sid, "a/b", None)


async def test_emit_only_when_checksum_differs(store):
    sid = uuid.uuid4()
    await store.upsert_stack(sid, "a/b", None)
    first = await store.emit_deployment_object(sid, "a: 1\n")
    again = await store.emit_deployment_object(sid, "a: 1\n")
    assert first.created and not again.created
    assert again.deployment_object.id == first.deployment_object.id
    assert first.deployment_object.yaml_checksum == sha256_hex("a: 1\n")
    second = await store.emit_deployment_object(sid, "a: 2\n")
    assert second.created and second.deployment_object.sequence_id > first.deployment_object.sequence_id
    latest = await store.latest_deployment_object(sid)
    assert latest == second.deployment_object
    assert await store.latest_deployment_object(sid) == second.deployment_object


async def test_emit_from_ten_concurrent_tasks_yields_one_row(store, db):
    sid = uuid.uuid4()
    await store.upsert_stack(sid, "a/b", None)
    results = await asyncio.gather(*(store.emit_deployment_object(sid, "same: content\n") for _ in range(10)))
    assert sum(r.created for r in results) == 1
    assert len({r.deployment_object.id for r in results}) == 1
    assert db.execute("SELECT count(*) FROM deployment_objects WHERE stack_id = %s", (sid,)).fetchone()[0] == 1


async def test_emit_for_missing_or_deleted_stack_raises(store):
    with pytest.raises(NotFound):
        await store.emit_deployment_object(uuid.uuid4(), "a: 1\n")
    sid = uuid.uuid4()
    await store.upsert_stack(sid, "a/b", None)
    await store.soft_delete_stack(sid)
    with pytest.raises(NotFound):
        await store.emit_deployment_object(sid, "a: 1\n")


async def test_desired_state_has_latest_objects_and_deletion_markers(store):
    owner = uuid.uuid4()
    live, dead, other = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    for sid, name in ((live, "a/live"), (dead, "a/dead"), (other, "a/other")):
        await store.upsert_stack(sid, name, None)
        await store.emit_deployment_object(sid, f"name: {name}\n")
    newest = (await store.emit_deployment_object(live, "name: live-v2\n")).deployment_object
    await store.set_agent_targets(owner, live, [("edge", "eu-1")])
    await store.set_agent_targets(uuid.uuid4(), dead, [("edge", "eu-1")])
    await store.set_agent_targets(uuid.uuid4(), other, [("edge", "us-1")])  # another cluster
    await store.soft_delete_stack(dead)

    state = {d.stack_name: d for d in await store.desired_state("edge", "eu-1")}
    assert set(state) == {"a/live", "a/dead"}
    assert state["a/live"].deployment_object_id == newest.id and not state["a/live"].is_deletion_marker
    assert state["a/live"].yaml_content == "name: live-v2\n"
    assert state["a/dead"].is_deletion_marker and state["a/dead"].stack_deleted
    assert await store.desired_state("nobody", "eu-1") == []


async def test_agent_target_rows_follow_their_owner(store, db):
    owner = uuid.uuid4()
    first, second = uuid.uuid4(), uuid.uuid4()
    await store.upsert_stack(first, "a/web", None)
    await store.set_agent_targets(owner, first, [("edge", "eu-1")])
    t1 = db.execute("SELECT id FROM agent_targets").fetchall()
    await store.set_agent_targets(owner, first, [("edge", "eu-1")])
    assert db.execute("SELECT id FROM agent_targets").fetchall() == t1  # idempotent
    await store.set_agent_targets(owner, first, [("edge-2", "eu-1")])  # spec change moves the row
    assert db.execute("SELECT agent_name FROM agent_targets").fetchall() == [("edge-2",)]
    # the Stack is deleted and re-created: a new row for the new stack, the old one stays
    await store.soft_delete_stack(first)
    await store.upsert_stack(second, "a/web", None)
    await store.set_agent_targets(owner, second, [("edge-2", "eu-1")])
    assert {r[0] for r in db.execute("SELECT stack_id FROM agent_targets")} == {first, second}
    # another AgentTarget binding the same agent to the same stack shares the row: no duplicate
    other = uuid.uuid4()
    await store.set_agent_targets(other, second, [("edge-2", "eu-1")])
    assert db.execute("SELECT count(*) FROM agent_targets WHERE stack_id = %s", (second,)).fetchone()[0] == 1
    with pytest.raises(NotFound):
        await store.set_agent_targets(uuid.uuid4(), uuid.uuid4(), [("edge-2", "eu-1")])
    assert await store.remove_agent_targets(owner) == 2
    assert db.execute("SELECT count(*) FROM agent_targets").fetchone()[0] == 0
    assert db.execute("SELECT count(*) FROM annotations").fetchone()[0] == 0, "owner records go with their rows"


async def test_register_agent_pak_hash_and_heartbeat(store):
    aid = uuid.uuid4()
    agent = await store.register_agent(aid, "edge", "eu-1", ["region=eu"], {"team": "infra"})
    assert agent.id == aid and agent.status == "PENDING" and agent.last_heartbeat is None
    assert await store.agent_metadata(aid) == (["region=eu"], {"team": "infra"})
    await store.set_agent_pak_hash(aid, "h1")
    assert (await store.agent_by_pak_hash("h1")).id == aid
    await store.set_agent_pak_hash(aid, "h2")
    assert await store.agent_by_pak_hash("h1") is None
    beat = await store.heartbeat(aid)
    assert (await store.get_agent(aid)).last_heartbeat == beat
    with pytest.raises(Conflict):
        await store.register_agent(uuid.uuid4(), "edge", "eu-1")
    await store.soft_delete_agent(aid)
    assert await store.agent_by_pak_hash("h2") is None
    with pytest.raises(NotFound):
        await store.heartbeat(aid)


async def test_record_events_only_for_targeted_stacks(store, db):
    agent = await store.register_agent(uuid.uuid4(), "edge", "eu-1")
    mine, theirs = uuid.uuid4(), uuid.uuid4()
    await store.upsert_stack(mine, "a/mine", None)
    await store.upsert_stack(theirs, "a/theirs", None)
    my_do = (await store.emit_deployment_object(mine, "a: 1\n")).deployment_object
    their_do = (await store.emit_deployment_object(theirs, "a: 1\n")).deployment_object
    await store.set_agent_targets(uuid.uuid4(), mine, [("edge", "eu-1")])
    await store.set_agent_targets(uuid.uuid4(), theirs, [("edge", "us-1")])

    ids = await store.record_events(agent, [EventIn(my_do.id, "APPLY", "SUCCESS", "ok")])
    assert len(ids) == 1
    with pytest.raises(NotTargeted) as err:
        await store.record_events(
            agent, [EventIn(my_do.id, "APPLY", "SUCCESS", "ok"), EventIn(their_do.id, "APPLY", "FAILURE", "x")]
        )
    assert err.value.ids == [their_do.id]
    assert db.execute("SELECT count(*) FROM agent_events").fetchone()[0] == 1, "a refused batch writes nothing"


async def test_purge_soft_deleted_through_store(store, db):
    sid = uuid.uuid4()
    await store.upsert_stack(sid, "a/b", None)
    await store.soft_delete_stack(sid)
    assert (await store.purge_soft_deleted(timedelta(days=1)))["stacks"] == 0
    db.execute("UPDATE stacks SET deleted_at = now() - interval '2 days'")
    assert (await store.purge_soft_deleted(timedelta(days=1)))["stacks"] == 1
    assert db.execute("SELECT count(*) FROM deployment_objects").fetchone()[0] == 0


async def test_save_stack_upserts_and_emits_in_one_go_once_under_concurrency(store, db):
    sid = uuid.uuid4()
    results = await asyncio.gather(*(
        store.save_stack(sid, "a/web", "d", ["x"], {"k": "v"}, "same: content\n") for _ in range(10)
    ))
    assert sum(r.created for r in results) == 1
    assert db.execute("SELECT count(*) FROM deployment_objects").fetchone()[0] == 1
    assert metadata(db, sid) == (["x"], {"k": "v"})


async def test_an_unchanged_target_writes_nothing_and_wakes_no_long_poll(store, db_url):
    import psycopg

    sid, owner = uuid.uuid4(), uuid.uuid4()
    await store.upsert_stack(sid, "a/web", None)
    with psycopg.connect(db_url, autocommit=True) as listener:
        listener.execute("LISTEN stackyard_state")
        await store.set_agent_targets(owner, sid, [("edge", "eu-1")])
        # a target row's notification names its stack and agent (the API drops that agent's cached ETag)
        expected = {"stack_id": str(sid), "agent": "edge", "cluster": "eu-1"}
        assert [json.loads(n.payload) for n in listener.notifies(timeout=2, stop_after=1)] == [expected]
        await store.set_agent_targets(owner, sid, [("edge", "eu-1")])
        assert list(listener.notifies(timeout=0.5)) == [], "a no-op reconcile sends no NOTIFY"
        await store.set_agent_targets(owner, sid, [("edge-2", "eu-1")])
        assert json.loads(next(iter(listener.notifies(timeout=2, stop_after=1))).payload)["stack_id"] == str(sid)
