"""Every status field the controller builds is declared in its CRD (the one typed source, stackyard.resources):
a field a real API server would prune fails here, before any cluster sees it."""

from __future__ import annotations

from datetime import timedelta

from stackyard.controller.stacks import STACK_STATUS_KEYS
from stackyard.controller.agents import agent_heartbeat_status
from stackyard.controller.status import agent_target_agent_status, agents_status, deployment_object_status, drift_status
from stackyard.config import OperatorConfig
from stackyard.resources.agent import STATUS as AGENT_STATUS
from stackyard.resources.agent_target import STATUS as TARGET_STATUS
from stackyard.resources.stack import STATUS as STACK_STATUS

from ..structural import prune
from .test_status import NOW, deployment_object, row


def declared(status: dict, schema: dict) -> None:
    assert prune(status, schema) == status, f"fields the CRD lacks: {status} vs {prune(status, schema)}"


def full_row(agent: str):
    found = row(agent, "FAILURE", 3, message="boom")
    return found.__class__(**{**found.__dict__, "drift_time": NOW, "drift_message": "Drifted: 1 object",
                              "health_details": {"health": "Degraded", "unhealthy": [{"object": "x", "status": "Failed"}]},
                              "health_sequence_id": 3})


def test_stack_status_fields_are_all_in_the_crd():
    latest = deployment_object(3)
    counts, entries = agents_status(latest, [full_row("a"), row("b", "SUCCESS", 3)], None, "T1")
    status = {"stackId": "id", "deploymentObject": deployment_object_status(latest, 2), "targets": counts,
              "agents": entries, "observedGeneration": 2}
    assert "lastDrift" in entries[0] and set(status) <= set(STACK_STATUS_KEYS)
    declared(status, STACK_STATUS)


def test_agent_target_and_agent_status_fields_are_all_in_the_crd():
    declared({"agent": {"registered": False}, "deployment": {"state": "Failed", "sequenceId": 3, "message": "m",
                                                            "healthMessage": "h", "lastDrift": drift_status(full_row("a"))},
              "selectedAgents": 1}, TARGET_STATUS)
    declared({k: v for k, v in agent_target_agent_status(None).items() if v is not None}, TARGET_STATUS["properties"]["agent"])
    config = OperatorConfig(database_url="unused")
    declared(agent_heartbeat_status(NOW - timedelta(seconds=5), config, held_stacks=2), AGENT_STATUS)
