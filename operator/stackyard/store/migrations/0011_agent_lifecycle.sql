-- An Agent that is deleted first lets its agent remove what it holds; drift reaches the tenant's status
-- (docs/architecture.md, "Deleting an Agent", "Health and rollout").

-- How many stacks the agent still holds in its cluster, as its last heartbeat said (NULL: an agent that does
-- not say, or has not synced yet).
ALTER TABLE agents ADD COLUMN held_stacks INTEGER CHECK (held_stacks >= 0);

-- Set when the Agent resource is deleted: from then on its desired state is empty, so the agent removes what
-- it holds; the operator soft-deletes the row (revoking the key) once the agent reports holding nothing.
ALTER TABLE agents ADD COLUMN deleting_since TIMESTAMPTZ;

-- The agent's newest DRIFT event on the target's stack, beside the apply and HEALTH pointers of 0010.
ALTER TABLE agent_targets ADD COLUMN last_drift_event_id UUID;

CREATE OR REPLACE FUNCTION stackyard_track_latest_events() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE agent_targets t SET last_event_id = n.id
      FROM (SELECT DISTINCT ON (d.stack_id, a.name, a.cluster_name) i.id, d.stack_id, a.name, a.cluster_name
              FROM inserted i
              JOIN deployment_objects d ON d.id = i.deployment_object_id
              JOIN agents a ON a.id = i.agent_id
             WHERE i.event_type NOT IN ('HEALTH', 'DRIFT')
             ORDER BY d.stack_id, a.name, a.cluster_name, i.created_at DESC) n
     WHERE t.stack_id = n.stack_id AND t.agent_name = n.name AND t.cluster_name = n.cluster_name;
    UPDATE agent_targets t SET last_health_event_id = n.id
      FROM (SELECT DISTINCT ON (d.stack_id, a.name, a.cluster_name) i.id, d.stack_id, a.name, a.cluster_name
              FROM inserted i
              JOIN deployment_objects d ON d.id = i.deployment_object_id
              JOIN agents a ON a.id = i.agent_id
             WHERE i.event_type = 'HEALTH'
             ORDER BY d.stack_id, a.name, a.cluster_name, i.created_at DESC) n
     WHERE t.stack_id = n.stack_id AND t.agent_name = n.name AND t.cluster_name = n.cluster_name;
    UPDATE agent_targets t SET last_drift_event_id = n.id
      FROM (SELECT DISTINCT ON (d.stack_id, a.name, a.cluster_name) i.id, d.stack_id, a.name, a.cluster_name
              FROM inserted i
              JOIN deployment_objects d ON d.id = i.deployment_object_id
              JOIN agents a ON a.id = i.agent_id
             WHERE i.event_type = 'DRIFT'
             ORDER BY d.stack_id, a.name, a.cluster_name, i.created_at DESC) n
     WHERE t.stack_id = n.stack_id AND t.agent_name = n.name AND t.cluster_name = n.cluster_name;
    RETURN NULL;
END;
$$;

CREATE OR REPLACE FUNCTION stackyard_purge_agent_events(p_older_than INTERVAL, p_batch INT) RETURNS BIGINT
LANGUAGE plpgsql AS $$
DECLARE
    n BIGINT;
BEGIN
    DELETE FROM agent_events WHERE id IN (
        SELECT e.id FROM agent_events e
         WHERE e.created_at < now() - p_older_than
           AND NOT EXISTS (SELECT 1 FROM agent_targets t WHERE t.last_event_id = e.id)
           AND NOT EXISTS (SELECT 1 FROM agent_targets t WHERE t.last_health_event_id = e.id)
           AND NOT EXISTS (SELECT 1 FROM agent_targets t WHERE t.last_drift_event_id = e.id)
         LIMIT p_batch);
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END;
$$;

-- A deleting agent's desired state changes (to nothing): wake its long-poll and drop its cached ETag.
CREATE FUNCTION stackyard_notify_agent_deleting() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('stackyard_state', json_build_object(
        'stack_id', NULL, 'agent', NEW.name, 'cluster', NEW.cluster_name)::text);
    RETURN NULL;
END;
$$;

CREATE TRIGGER agents_notify_deleting AFTER UPDATE OF deleting_since ON agents
    FOR EACH ROW WHEN (OLD.deleting_since IS DISTINCT FROM NEW.deleting_since)
    EXECUTE FUNCTION stackyard_notify_agent_deleting();
