"""The wire model between the agent API and the agent: one definition for both sides and the OpenAPI document.

Also the one apply order of kinds: the operator renders deployment objects in
it, the agent applies in it and deletes in its reverse.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Health of a stack on one agent (README, "Health, drift and rollout"), reported in HEALTH events.
HEALTH_HEALTHY, HEALTH_PROGRESSING, HEALTH_DEGRADED, HEALTH_UNKNOWN = "Healthy", "Progressing", "Degraded", "Unknown"
HEALTHS = (HEALTH_HEALTHY, HEALTH_PROGRESSING, HEALTH_DEGRADED, HEALTH_UNKNOWN)
OBJECT_STATUSES = ("Current", "InProgress", "Failed", "Terminating", "NotFound")  # kstatus
HEALTH_EVENT, DRIFT_EVENT = "HEALTH", "DRIFT"
MAX_UNHEALTHY_IN_SUMMARY = 5
MAX_DRIFTED_IN_EVENT = 10

# Applied first, and so listed first: Namespaces, then CRDs, then everything else.
KIND_ORDER = {"Namespace": 0, "CustomResourceDefinition": 1}


def apply_rank(kind: str) -> int:
    """Where objects of `kind` come in the apply order (lower first; deletions go the other way)."""
    return KIND_ORDER.get(kind, len(KIND_ORDER))


@dataclass(frozen=True)
class WireStack:
    """One stack of an agent's desired state: the deployment object it should be at."""

    stack_id: str
    stack_name: str
    deleted: bool
    deployment_object_id: str
    sequence_id: int
    checksum: str
    is_deletion_marker: bool
    yaml: str

    def to_json(self) -> dict[str, Any]:
        return {
            "stackId": self.stack_id,
            "stackName": self.stack_name,
            "deleted": self.deleted,
            "deploymentObject": {"id": self.deployment_object_id, "sequenceId": self.sequence_id,
                                 "checksum": self.checksum, "isDeletionMarker": self.is_deletion_marker,
                                 "yaml": self.yaml},
        }

    @classmethod
    def from_json(cls, entry: dict[str, Any]) -> "WireStack":
        do = entry["deploymentObject"]
        return cls(entry["stackId"], entry["stackName"], bool(entry.get("deleted")), do["id"], do["sequenceId"],
                   do["checksum"], do["isDeletionMarker"], do["yaml"])


def target_state_document(agent_id: str, stacks: list[WireStack]) -> dict[str, Any]:
    """The body of `GET /api/v1/agents/self/target-state`."""
    return {"agentId": agent_id, "stacks": [stack.to_json() for stack in stacks]}


def stacks_of(document: dict[str, Any]) -> list[WireStack]:
    """The stacks of a target-state body (the agent's side of `target_state_document`)."""
    return [WireStack.from_json(entry) for entry in document.get("stacks", [])]


# The JSON schema of a target-state body (part of the OpenAPI document).
TARGET_STATE: dict[str, Any] = {
    "type": "object",
    "required": ["agentId", "stacks"],
    "properties": {
        "agentId": {"type": "string"},
        "stacks": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["stackId", "stackName", "deleted", "deploymentObject"],
                "properties": {
                    "stackId": {"type": "string"},
                    "stackName": {"type": "string"},
                    "deleted": {"type": "boolean"},
                    "deploymentObject": {
                        "type": "object",
                        "required": ["id", "sequenceId", "checksum", "isDeletionMarker", "yaml"],
                        "properties": {
                            "id": {"type": "string"},
                            "sequenceId": {"type": "integer"},
                            "checksum": {"type": "string"},
                            "isDeletionMarker": {"type": "boolean"},
                            "yaml": {"type": "string"},
                        },
                    },
                },
            },
        },
    },
}
