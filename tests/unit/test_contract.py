"""The agent contract (stackyard.protocol) is the one definition of the agent API's bodies: what the agent
sends validates against the schemas the API enforces, what the API answers reads back through the models, and
the database holds at least what the contract allows (tests/test_schema.py). A disagreement fails here, not in a
fuzz run."""

from __future__ import annotations

import uuid

import jsonschema

from stackyard import protocol
from stackyard.agent.health import ObjectHealth, stack_health
from stackyard.agent.loop import AgentSettings, StackAgent
from stackyard.api.validation import StrictValidator
from stackyard.metrics import AgentMetrics


def valid(body: dict, schema: dict) -> None:
    errors = [e.message for e in StrictValidator(schema).iter_errors(body)]
    assert not errors, errors


def agent() -> StackAgent:
    return StackAgent(broker=None, kube=None, settings=AgentSettings(), metrics=AgentMetrics())  # type: ignore[arg-type]


def test_what_the_agent_sends_is_what_the_api_accepts():
    subject = agent()
    valid(subject.heartbeat_report().to_json(), protocol.HEARTBEAT_REQUEST)
    subject.held_stacks = 3
    valid(subject.heartbeat_report().to_json(), protocol.HEARTBEAT_REQUEST)
    stack = protocol.WireStack(str(uuid.uuid4()), "ns/web", False, str(uuid.uuid4()), 7, "c", False, "")
    summary = stack_health([(f"v1/ConfigMap apps/c{i}", ObjectHealth("Failed", "x" * 900)) for i in range(9)])
    subject._event(stack, protocol.HEALTH_EVENT, "FAILURE", "m" * 10_000, summary)
    subject._event(stack, protocol.APPLY_EVENT, "SUCCESS", "applied")
    valid(protocol.events_body(subject.outbox), protocol.EVENTS_REQUEST)
    too_many = [protocol.Event(stack.deployment_object_id, "APPLY", "SUCCESS")] * (protocol.MAX_EVENTS_PER_BATCH + 5)
    valid(protocol.events_body(too_many), protocol.EVENTS_REQUEST)


def test_answers_read_back_through_the_models():
    identity = protocol.Identity("id", "edge", "eu-1", "ACTIVE", None, ["a=b"], {"k": "v"})
    valid(identity.to_json(), protocol.IDENTITY)
    assert protocol.Identity.from_json(identity.to_json()) == identity
    stack = protocol.WireStack("s", "ns/web", False, "d", 1, "c", False, "kind: ConfigMap\n")
    failed = protocol.WireStack("t", "ns/api", False, "e", 2, "c", False, "", "OverlayFailed: overlay 0: ...")
    document = protocol.target_state_document("agent", [stack, failed])
    jsonschema.Draft7Validator(protocol.TARGET_STATE).validate(document)
    assert protocol.stacks_of(document) == [stack, failed]
    beat = protocol.Heartbeat("DEGRADED", 2)
    assert protocol.Heartbeat.from_json(beat.to_json()) == beat
    event = protocol.Event(str(uuid.uuid4()), "DRIFT", "SUCCESS", "m", {"drifted": [{"object": "x"}]}, "ab12")
    assert protocol.Event.from_json(event.to_json()) == event
