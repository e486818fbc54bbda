"""Tenancy: an AgentTarget binds only an Agent of its own namespace, or one that grants its namespace.

The rule is enforced by the database itself (a trigger on target rows, and
one on agents that drops targets they no longer permit), so these tests check
it with raw SQL as well as through the operator.
"""

from __future__ import annotations

import asyncio
import uuid

import psycopg
import pytest

from stackyard.store import NotPermitted

from .api_harness import make_stack
from .builders import configmap
from .operator_harness import AGENT_TARGETS, AGENTS, STACKS, condition, eventually

# Store level ----------------------------------------------------------------------------------


async def _agent(store, namespace: str, allowed=(), name: str = "edge", agent_id: uuid.UUID | None = None):
    agent_id = agent_id or uuid.uuid4()
    await store.register_agent(agent_id, name, "eu-1", namespace=namespace, allowed_namespaces=allowed)
    return agent_id


async def _stack(store, namespace: str) -> uuid.UUID:
    stack_id, _ = await make_stack(store, f"{namespace}/web")
    return stack_id


async def _targets(store) -> list[str]:
    return [s.stack_name for s in await store.desired_state("edge", "eu-1")]


async def test_same_namespace_is_permitted_and_others_are_not(store, db):
    await _agent(store, "ten-b")
    own, foreign = await _stack(store, "ten-b"), await _stack(store, "ten-a")
    await store.set_agent_targets(uuid.uuid4(), own, [("edge", "eu-1")], "ten-b")
    with pytest.raises(NotPermitted) as refused:
        await store.set_agent_targets(uuid.uuid4(), foreign, [("edge", "eu-1")], "ten-a")
    assert "ten-b" not in str(refused.value), "the message reveals nothing of the Agent's namespace"
    with pytest.raises(psycopg.errors.InsufficientPrivilege):  # no code path around it
        db.execute("INSERT INTO agent_targets (stack_id, agent_name, cluster_name, namespace)"
                   " VALUES (%s, 'edge', 'eu-1', 'ten-a')", (foreign,))
    assert await _targets(store) == ["ten-b/web"]


async def test_a_grant_permits_and_revoking_it_removes_the_target(store):
    agent_id = await _agent(store, "ten-b", allowed=["ten-a"])
    foreign = await _stack(store, "ten-a")
    await store.set_agent_targets(uuid.uuid4(), foreign, [("edge", "eu-1")], "ten-a")
    assert await _targets(store) == ["ten-a/web"]
    await _agent(store, "ten-b", allowed=[], agent_id=agent_id)  # the grant is removed
    assert await _targets(store) == [], "the stack leaves the agent's desired state"


async def test_targets_written_before_the_agent_exists_are_checked_when_it_registers(store):
    foreign, own = await _stack(store, "ten-a"), await _stack(store, "ten-c")
    await store.set_agent_targets(uuid.uuid4(), foreign, [("edge", "eu-1")], "ten-a")
    await store.set_agent_targets(uuid.uuid4(), own, [("edge", "eu-1")], "ten-c")
    await _agent(store, "ten-c")  # registered in ten-c: ten-a's target is dropped
    assert await _targets(store) == ["ten-c/web"]


async def test_an_agent_moved_to_another_namespace_keeps_only_what_it_permits(store):
    old_id = await _agent(store, "ten-a")
    stack = await _stack(store, "ten-a")
    await store.set_agent_targets(uuid.uuid4(), stack, [("edge", "eu-1")], "ten-a")
    assert await _targets(store) == ["ten-a/web"]
    await store.soft_delete_agent(old_id)  # the Agent is deleted in ten-a and created in ten-b
    await _agent(store, "ten-b")
    assert await _targets(store) == []


async def _blocked_or_done(db, task: asyncio.Task) -> bool:
    """True once `task` finished, or waits on another transaction's advisory lock."""
    waiting = db.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted").fetchone()[0]
    return task.done() or waiting > 0


async def test_a_target_written_while_its_agent_registers_is_still_checked(store, db, db_url):
    """Found by CI: under READ COMMITTED the two triggers could each miss the other's uncommitted row."""
    foreign = await _stack(store, "ten-a")
    async with await psycopg.AsyncConnection.connect(db_url) as tenant:
        await tenant.execute("INSERT INTO agent_targets (stack_id, agent_name, cluster_name, namespace)"
                             " VALUES (%s, 'edge', 'eu-1', 'ten-a')", (foreign,))  # no agent yet: permitted
        registering = asyncio.create_task(_agent(store, "ten-b"))
        await eventually(lambda: _blocked_or_done(db, registering))
        await tenant.commit()
    await registering
    assert await _targets(store) == [], "the registration saw the committed row and removed it"


async def test_a_target_written_while_its_agent_is_uncommitted_is_refused(store, db, db_url):
    foreign = await _stack(store, "ten-a")
    async with await psycopg.AsyncConnection.connect(db_url) as owner:
        await owner.execute("INSERT INTO agents (id, name, cluster_name, namespace) VALUES (%s, 'edge', 'eu-1', 'ten-b')",
                            (uuid.uuid4(),))
        binding = asyncio.create_task(store.set_agent_targets(uuid.uuid4(), foreign, [("edge", "eu-1")], "ten-a"))
        await eventually(lambda: _blocked_or_done(db, binding))
        await owner.commit()
    with pytest.raises(NotPermitted):
        await binding
    assert await _targets(store) == []


# Through the operator -------------------------------------------------------------------------


def _target(namespace: str) -> dict:
    return {"metadata": {"name": "web-edge", "namespace": namespace},
            "spec": {"stackRef": {"name": "web"}, "agentName": "edge", "clusterName": "eu-1"}}


async def test_a_tenant_cannot_ship_to_another_tenants_agent_until_granted(operator, cluster, store):
    agent = await cluster.create(AGENTS, {"metadata": {"name": "edge", "namespace": "ten-b"},
                                          "spec": {"clusterName": "eu-1"}})
    await cluster.wait_condition(AGENTS, "edge", "Ready", "True", namespace="ten-b")
    await cluster.create(STACKS, {"metadata": {"name": "web", "namespace": "ten-a"},
                                  "spec": {"resources": [configmap("rbac-for-everyone")]}})
    await cluster.create(AGENT_TARGETS, _target("ten-a"))
    stalled = await cluster.wait_condition(AGENT_TARGETS, "web-edge", "Stalled", "True", reason="AgentNotPermitted",
                                           namespace="ten-a")
    message = condition(stalled, "Ready")["message"]
    assert "ten-b" not in message and agent["metadata"]["uid"] not in message
    assert await _targets(store) == []

    # the owner of the Agent grants ten-a: the AgentTarget binds without anyone touching it
    await cluster.patch(AGENTS, "edge", {"spec": {"allowedNamespaces": ["ten-a"]}}, namespace="ten-b")
    await cluster.wait_condition(AGENT_TARGETS, "web-edge", "Ready", "True", namespace="ten-a")
    assert await _targets(store) == ["ten-a/web"]

    # and revokes it: the stack leaves the agent's desired state, the AgentTarget says why
    await cluster.patch(AGENTS, "edge", {"spec": {"allowedNamespaces": []}}, namespace="ten-b")
    await cluster.wait_condition(AGENT_TARGETS, "web-edge", "Stalled", "True", reason="AgentNotPermitted",
                                 namespace="ten-a")
    assert await _targets(store) == []


async def test_a_namespace_selector_grants_by_namespace_labels(operator, cluster, store):
    for name, labels in (("ten-a", {"team": "apps"}), ("ten-x", {"team": "other"})):
        await cluster.client.request("POST", "/api/v1/namespaces",
                                     {"apiVersion": "v1", "kind": "Namespace",
                                      "metadata": {"name": name, "labels": labels}})
    await cluster.create(AGENTS, {"metadata": {"name": "edge", "namespace": "ten-b"},
                                  "spec": {"clusterName": "eu-1",
                                           "allowedNamespaceSelector": {"matchLabels": {"team": "apps"}}}})
    for namespace in ("ten-a", "ten-x"):
        await cluster.create(STACKS, {"metadata": {"name": "web", "namespace": namespace},
                                      "spec": {"resources": [configmap("a")]}})
        await cluster.create(AGENT_TARGETS, _target(namespace))
    await cluster.wait_condition(AGENT_TARGETS, "web-edge", "Ready", "True", namespace="ten-a")
    await cluster.wait_condition(AGENT_TARGETS, "web-edge", "Stalled", "True", reason="AgentNotPermitted",
                                 namespace="ten-x")

    async def only_ten_a():
        return await _targets(store) == ["ten-a/web"]

    await eventually(only_ten_a)


async def test_malformed_namespace_selectors_stall_with_a_reason(operator, cluster):
    bad = {"matchExpressions": [{"key": "team", "operator": "In", "values": []}]}
    await cluster.create(AGENTS, {"metadata": {"name": "edge"},
                                  "spec": {"clusterName": "eu-1", "allowedNamespaceSelector": bad}})
    stalled = await cluster.wait_condition(AGENTS, "edge", "Stalled", "True", reason="InvalidSelector")
    assert "values" in condition(stalled, "Ready")["message"]
