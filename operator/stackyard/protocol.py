"""The agent contract: every body the agent API and the agent exchange, as a typed model with its limits and its
JSON Schema (docs/architecture.md, "The agent contract").

The API validates requests against these schemas and builds its answers from these models; the agent builds
its requests from the same models and reads the answers through them; the OpenAPI document (`api/schemas.py`)
is assembled from the schemas; the database's CHECKs and column sizes are tested against the limits
(tests/unit/test_contract.py). A field added here is added everywhere it must be.

Also the one apply order of kinds: the operator renders deployment objects in it, the agent applies in it and
deletes in its reverse.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# Health of a stack on one agent (README, "Health, drift and rollout"), reported in HEALTH events.
HEALTH_HEALTHY, HEALTH_PROGRESSING, HEALTH_DEGRADED, HEALTH_UNKNOWN = "Healthy", "Progressing", "Degraded", "Unknown"
HEALTHS = (HEALTH_HEALTHY, HEALTH_PROGRESSING, HEALTH_DEGRADED, HEALTH_UNKNOWN)
# An Agent's phase, from its heartbeats (its status.phase and `stackyard_agents{phase}`).
PHASE_PENDING, PHASE_ACTIVE, PHASE_STALE = "Pending", "Active", "Stale"
AGENT_PHASES = (PHASE_PENDING, PHASE_ACTIVE, PHASE_STALE)
OBJECT_STATUSES = ("Current", "InProgress", "Failed", "Terminating", "NotFound")  # kstatus
APPLY_EVENT, DELETE_EVENT, HEALTH_EVENT, DRIFT_EVENT = "APPLY", "DELETE", "HEALTH", "DRIFT"
EVENT_STATUSES = ("SUCCESS", "FAILURE")
HEARTBEAT_STATUSES = ("ACTIVE", "DEGRADED")

# Limits (the database's columns and CHECKs hold at least these: tests/unit/test_contract.py).
MAX_EVENTS_PER_BATCH = 100
MAX_MESSAGE_LENGTH = 4096
MAX_EVENT_TYPE_LENGTH = 50
MAX_DETAIL_TEXT = 600
MAX_UNHEALTHY_IN_SUMMARY = 5
MAX_DRIFTED_IN_EVENT = 10
MAX_HELD_STACKS = 1_000_000
MAX_CHECKSUM_LENGTH = 128
UUID_PATTERN = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
# Text PostgreSQL can store has no NUL. (Nor lone UTF-16 surrogates, which the API refuses in any string too;
# a pattern cannot say so portably: ECMA and Rust regex engines differ on surrogate ranges.)
STORABLE_TEXT = r"^[^\x00]*$"

# Applied first, and so listed first: Namespaces, then CRDs, then everything else.
KIND_ORDER = {"Namespace": 0, "CustomResourceDefinition": 1}


def apply_rank(kind: str) -> int:
    """Where objects of `kind` come in the apply order (lower first; deletions go the other way)."""
    return KIND_ORDER.get(kind, len(KIND_ORDER))


# Requests -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Heartbeat:
    """`POST /api/v1/agents/self/heartbeat`: alive, and how many stacks the agent holds in its cluster."""

    status: str = "ACTIVE"
    held_stacks: int | None = None  # None: the agent has not synced yet

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"status": self.status}
        if self.held_stacks is not None:
            body["heldStacks"] = self.held_stacks
        return body

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> "Heartbeat":
        return cls(body.get("status", "ACTIVE"), body.get("heldStacks"))


@dataclass(frozen=True)
class Event:
    """One event of `POST /api/v1/agents/self/events`: what happened to a deployment object on this agent."""

    deployment_object_id: str
    event_type: str
    status: str
    message: str = ""
    details: Mapping[str, Any] | None = None
    checksum: str | None = None  # of the content the agent received (its own rendering, with overlays)

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"deploymentObjectId": self.deployment_object_id, "eventType": self.event_type,
                                "status": self.status, "message": self.message[:MAX_MESSAGE_LENGTH]}
        if self.details is not None:
            body["details"] = dict(self.details)
        if self.checksum is not None:
            body["checksum"] = self.checksum
        return body

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> "Event":
        return cls(body["deploymentObjectId"], body["eventType"], body["status"], body.get("message", ""),
                   body.get("details"), body.get("checksum"))


def events_body(events: list[Event]) -> dict[str, Any]:
    """The body of one events request (at most MAX_EVENTS_PER_BATCH events)."""
    return {"events": [event.to_json() for event in events[:MAX_EVENTS_PER_BATCH]]}


# Answers --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Identity:
    """`GET /api/v1/agents/self`: who the key belongs to."""

    id: str
    name: str
    cluster_name: str
    status: str | None
    last_heartbeat: str | None
    labels: list[str] = field(default_factory=list)
    annotations: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "clusterName": self.cluster_name, "status": self.status,
                "lastHeartbeat": self.last_heartbeat, "labels": self.labels, "annotations": self.annotations}

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> "Identity":
        return cls(body["id"], body["name"], body["clusterName"], body.get("status"), body.get("lastHeartbeat"),
                   list(body.get("labels") or []), dict(body.get("annotations") or {}))


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
    # This agent's rendering failed (an overlay's variable it has no value for): `yaml` is empty, and the agent
    # keeps what it applied and reports the failure.
    render_error: str | None = None
    # As whom the agent applies, prunes and deletes this stack's objects: {"serviceAccount": {"namespace", "name"}}
    # (impersonated), {"refused": why} (the Agent requires impersonation and maps nothing: apply nothing), or
    # None (as the agent itself).
    impersonate: Mapping[str, Any] | None = None

    @property
    def blocked(self) -> str | None:
        """Why this agent must not apply this stack now (it keeps what it applied), or None."""
        if self.render_error is not None:
            return self.render_error
        if self.impersonate is not None and self.impersonate.get("refused"):
            return str(self.impersonate["refused"])
        return None

    @property
    def service_account_user(self) -> str | None:
        """The user to impersonate for this stack (`system:serviceaccount:<ns>:<name>`), or None."""
        account = (self.impersonate or {}).get("serviceAccount")
        return f"system:serviceaccount:{account['namespace']}:{account['name']}" if account else None

    def to_json(self) -> dict[str, Any]:
        body = {
            "stackId": self.stack_id,
            "stackName": self.stack_name,
            "deleted": self.deleted,
            "deploymentObject": {"id": self.deployment_object_id, "sequenceId": self.sequence_id,
                                 "checksum": self.checksum, "isDeletionMarker": self.is_deletion_marker,
                                 "yaml": self.yaml},
        }
        if self.render_error is not None:
            body["renderError"] = self.render_error
        if self.impersonate is not None:
            body["impersonate"] = dict(self.impersonate)
        return body

    @classmethod
    def from_json(cls, entry: dict[str, Any]) -> "WireStack":
        do = entry["deploymentObject"]
        return cls(entry["stackId"], entry["stackName"], bool(entry.get("deleted")), do["id"], do["sequenceId"],
                   do["checksum"], do["isDeletionMarker"], do["yaml"], entry.get("renderError"),
                   entry.get("impersonate"))


def target_state_document(agent_id: str, stacks: list[WireStack]) -> dict[str, Any]:
    """The body of `GET /api/v1/agents/self/target-state`."""
    return {"agentId": agent_id, "stacks": [stack.to_json() for stack in stacks]}


def stacks_of(document: dict[str, Any]) -> list[WireStack]:
    """The stacks of a target-state body (the agent's side of `target_state_document`)."""
    return [WireStack.from_json(entry) for entry in document.get("stacks", [])]


# JSON Schemas (requests are validated against them; the OpenAPI document is made of them) ----------------

_TEXT = {"type": "string", "maxLength": MAX_DETAIL_TEXT, "pattern": STORABLE_TEXT}

HEARTBEAT_REQUEST: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "status": {"type": "string", "enum": list(HEARTBEAT_STATUSES)},
        "heldStacks": {"type": "integer", "minimum": 0, "maximum": MAX_HELD_STACKS,
                       "description": "stacks the agent holds in its cluster (an inventory each) after its last sync"},
    },
}

DETAILS: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "description": "HEALTH events: the stack's health on this agent (sent only when it changes), object counts per"
                   " kstatus status and the first unhealthy objects. DRIFT events: the objects someone else changed,"
                   " removed or deleted, repaired by the agent.",
    "properties": {
        "health": {"type": "string", "enum": list(HEALTHS)},
        "counts": {"type": "object", "additionalProperties": False,
                   "properties": {s: {"type": "integer", "minimum": 0, "maximum": 1000000} for s in OBJECT_STATUSES}},
        "unhealthy": {"type": "array", "maxItems": MAX_UNHEALTHY_IN_SUMMARY, "items": {
            "type": "object", "additionalProperties": False, "required": ["object", "status"],
            "properties": {"object": _TEXT, "status": {"type": "string", "enum": list(OBJECT_STATUSES)},
                           "message": _TEXT}}},
        "drifted": {"type": "array", "maxItems": MAX_DRIFTED_IN_EVENT, "items": {
            "type": "object", "additionalProperties": False, "required": ["object"],
            "properties": {"object": _TEXT, "managers": {"type": "array", "maxItems": 10, "items": _TEXT},
                           "fields": {"type": "array", "maxItems": 20, "items": _TEXT}}}},
    },
}

EVENT: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["deploymentObjectId", "eventType", "status"],
    "properties": {
        "deploymentObjectId": {"type": "string", "format": "uuid", "pattern": UUID_PATTERN},
        "eventType": {"type": "string", "minLength": 1, "maxLength": MAX_EVENT_TYPE_LENGTH, "pattern": "^[A-Z][A-Z_]*$"},
        "status": {"type": "string", "enum": list(EVENT_STATUSES)},
        "message": {"type": "string", "maxLength": MAX_MESSAGE_LENGTH, "pattern": STORABLE_TEXT,
                    "description": "free text; PostgreSQL cannot store NUL characters or lone UTF-16 surrogates"},
        "details": DETAILS,
        "checksum": {"type": "string", "maxLength": MAX_CHECKSUM_LENGTH, "pattern": "^[0-9a-f]+$",
                     "description": "checksum of the content the agent received for this deployment object (its"
                                    " own rendering when the Stack has overlays)"},
    },
}

EVENTS_REQUEST: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["events"],
    "properties": {"events": {"type": "array", "minItems": 1, "maxItems": MAX_EVENTS_PER_BATCH, "items": EVENT}},
}

IDENTITY: dict[str, Any] = {
    "type": "object",
    "required": ["id", "name", "clusterName", "labels", "annotations"],
    "properties": {
        "id": {"type": "string"},
        "name": {"type": "string"},
        "clusterName": {"type": "string"},
        "status": {"type": ["string", "null"]},
        "lastHeartbeat": {"type": ["string", "null"]},
        "labels": {"type": "array", "items": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}

HEARTBEAT_RESPONSE: dict[str, Any] = {
    "type": "object",
    "required": ["lastHeartbeat"],
    "properties": {"lastHeartbeat": {"type": "string"}},
}

EVENTS_RESPONSE: dict[str, Any] = {
    "type": "object",
    "required": ["accepted", "ids"],
    "properties": {"accepted": {"type": "integer"}, "ids": {"type": "array", "items": {"type": "string"}}},
}

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
                    "renderError": {"type": "string", "description": "this agent's rendering of the stack's"
                                    " overlays failed (a variable it has no value for); yaml is empty and the"
                                    " agent keeps what it applied"},
                    "impersonate": {
                        "type": "object",
                        "description": "as whom the agent applies, prunes and deletes this stack's objects (the"
                                       " Agent's spec.impersonate); refused: the Agent requires impersonation and"
                                       " maps no service account to the stack's namespace, so nothing is applied",
                        "properties": {
                            "serviceAccount": {"type": "object", "required": ["namespace", "name"],
                                               "properties": {"namespace": {"type": "string"},
                                                              "name": {"type": "string"}}},
                            "refused": {"type": "string"},
                        },
                    },
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
