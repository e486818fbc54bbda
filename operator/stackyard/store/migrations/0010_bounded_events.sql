-- Agent events stay bounded however many an agent sends (docs/architecture.md, "Event retention").

-- Each target row points at its agent's newest apply/delete event and newest HEALTH event on its stack, kept by
-- a trigger: a Stack's status reads one row per target instead of walking the agent's events in time order
-- until one of this stack turns up. (No foreign key: an event a hard delete removes leaves a pointer that
-- simply finds nothing; retention never removes an event a target points at.)
ALTER TABLE agent_targets ADD COLUMN last_event_id UUID;
ALTER TABLE agent_targets ADD COLUMN last_health_event_id UUID;

-- Recording the pointers must neither re-check tenancy nor wake the agent's long-poll: those triggers now fire
-- only for the columns they are about.
DROP TRIGGER agent_targets_permitted ON agent_targets;
CREATE TRIGGER agent_targets_permitted BEFORE INSERT OR UPDATE OF stack_id, agent_name, cluster_name, namespace
    ON agent_targets FOR EACH ROW EXECUTE FUNCTION stackyard_check_target_permitted();
DROP TRIGGER agent_targets_notify ON agent_targets;
CREATE TRIGGER agent_targets_notify
    AFTER INSERT OR DELETE OR UPDATE OF stack_id, agent_name, cluster_name, released_sequence ON agent_targets
    FOR EACH ROW EXECUTE FUNCTION stackyard_notify_state();

-- A statement-level trigger: one UPDATE per INSERT statement whatever its number of rows (the API inserts
-- an agent's events one statement each, in the agent's order, so the last statement's event is the newest).
CREATE FUNCTION stackyard_track_latest_events() RETURNS trigger
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
    RETURN NULL;
END;
$$;

CREATE TRIGGER agent_events_track_latest AFTER INSERT ON agent_events
    REFERENCING NEW TABLE AS inserted FOR EACH STATEMENT EXECUTE FUNCTION stackyard_track_latest_events();

UPDATE agent_targets t SET last_event_id = (
    SELECT e.id FROM agent_events e JOIN deployment_objects d ON d.id = e.deployment_object_id
      JOIN agents a ON a.id = e.agent_id AND a.deleted_at IS NULL
     WHERE d.stack_id = t.stack_id AND a.name = t.agent_name AND a.cluster_name = t.cluster_name
       AND e.deleted_at IS NULL AND e.event_type NOT IN ('HEALTH', 'DRIFT')
     ORDER BY e.created_at DESC LIMIT 1),
  last_health_event_id = (
    SELECT e.id FROM agent_events e JOIN deployment_objects d ON d.id = e.deployment_object_id
      JOIN agents a ON a.id = e.agent_id AND a.deleted_at IS NULL
     WHERE d.stack_id = t.stack_id AND a.name = t.agent_name AND a.cluster_name = t.cluster_name
       AND e.deleted_at IS NULL AND e.event_type = 'HEALTH'
     ORDER BY e.created_at DESC LIMIT 1);

-- Count retention per (agent, deployment object) runs as events arrive; age retention scans by time.
CREATE INDEX agent_events_agent_object_idx ON agent_events (agent_id, deployment_object_id, created_at DESC);
CREATE INDEX agent_events_created_idx ON agent_events (created_at);

-- Age retention: live events older than p_older_than, except those a target points at, at most p_batch rows
-- per call (the caller repeats until fewer come back).
CREATE FUNCTION stackyard_purge_agent_events(p_older_than INTERVAL, p_batch INT) RETURNS BIGINT
LANGUAGE plpgsql AS $$
DECLARE
    n BIGINT;
BEGIN
    DELETE FROM agent_events WHERE id IN (
        SELECT e.id FROM agent_events e
         WHERE e.created_at < now() - p_older_than
           AND NOT EXISTS (SELECT 1 FROM agent_targets t WHERE t.last_event_id = e.id)
           AND NOT EXISTS (SELECT 1 FROM agent_targets t WHERE t.last_health_event_id = e.id)
         LIMIT p_batch);
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END;
$$;
