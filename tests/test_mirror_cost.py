"""The status mirror's cost per notification: a heartbeat must not re-evaluate every selector AgentTarget.

The mirror runs here without Kopf (its indexes are plain dicts) over a real
PostgreSQL; the Kubernetes client is a recorder, as the mirror only patches.
"""

from __future__ import annotations

import json
import time
import uuid

from stackyard.controller.mirror import SELECTORS, Mirror, index_entry
from stackyard.metrics import Metrics
from stackyard.store import Store
from stackyard.store.listen import AGENTS_CHANNEL

from .operator_harness import operator_config


class CountingStore(Store):
    selections = 0

    async def permitted_agents(self, namespace: str) -> list[tuple[str, str, dict[str, str]]]:
        self.selections += 1
        return await super().permitted_agents(namespace)


class RecordingKube:
    def __init__(self) -> None:
        self.patches: list = []

    async def merge_patch(self, ref, patch, subresource=None):
        self.patches.append((ref, patch))


async def test_heartbeats_do_not_reevaluate_selectors_but_registration_changes_do(db_url, kube_server):
    store = CountingStore((await Store.open(db_url)).pool)
    kube = RecordingKube()
    try:
        agent_id = uuid.uuid4()
        await store.register_agent(agent_id, "edge", "eu-1", namespace="default", selector_labels={"region": "eu"})
        selector_target = index_entry({
            "apiVersion": "stackyard.dev/v1alpha1", "kind": "AgentTarget",
            "metadata": {"uid": str(uuid.uuid4()), "namespace": "default", "name": "web-eu", "generation": 1},
            "spec": {"stackRef": {"name": "web"}, "agentSelector": {"matchLabels": {"region": "eu"}}}})
        mirror = Mirror(store=store, database_url=db_url, kube=lambda: kube, metrics=Metrics(),
                        config=operator_config(db_url, kube_server), stacks_by_uid={}, targets_by_stack={},
                        targets_by_agent={}, agents_by_uid={}, selector_targets={SELECTORS: [selector_target]})
        for _ in range(20):  # heartbeats, as the trigger notifies them
            mirror._note(AGENTS_CHANNEL, json.dumps({"agent_id": str(agent_id), "at": time.time()}))
            await mirror.flush()
        assert store.selections == 0, "a heartbeat re-evaluated the selector AgentTargets"
        mirror.note_agent(agent_id)  # the Agent was relabelled, granted, created or deleted
        await mirror.flush()
        assert store.selections == 1
        assert [ref.name for ref, _ in kube.patches] == ["web-eu"]
    finally:
        await store.close()
