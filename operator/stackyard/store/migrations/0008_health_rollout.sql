-- Health, drift and staged rollout (docs/architecture.md, "Health and rollout").

-- Structured part of an event: a HEALTH event's summary, a DRIFT event's objects. Bounded by the API schema.
ALTER TABLE agent_events ADD COLUMN details JSONB;
CREATE INDEX agent_events_health_idx ON agent_events (agent_id, deployment_object_id, created_at DESC)
    WHERE event_type = 'HEALTH';

-- A Stack's rollout policy, from spec.rollout: {"maxUnavailable": 2 | "25%", "pause": false}.
-- NULL: no staged rollout, every target follows the latest version.
ALTER TABLE stacks ADD COLUMN rollout JSONB;

-- The version released to a target: NULL follows the latest; 0 nothing released yet; n the deployment object
-- of sequence n (and the deletion marker always). The operator releases; the agents only read.
ALTER TABLE agent_targets ADD COLUMN released_sequence BIGINT CHECK (released_sequence >= 0);
