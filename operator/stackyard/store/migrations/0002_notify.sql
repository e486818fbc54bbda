-- LISTEN/NOTIFY: the agent API's long-poll wakes on stackyard_state (payload: stack id);
-- the operator's status mirror listens on stackyard_agents and stackyard_events.

CREATE FUNCTION stackyard_notify_state() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    row_stack UUID;
BEGIN
    IF TG_OP = 'DELETE' THEN
        row_stack := OLD.stack_id;
    ELSE
        row_stack := NEW.stack_id;
    END IF;
    PERFORM pg_notify('stackyard_state', row_stack::text);
    RETURN NULL;
END;
$$;

CREATE TRIGGER deployment_objects_notify AFTER INSERT ON deployment_objects
    FOR EACH ROW EXECUTE FUNCTION stackyard_notify_state();
CREATE TRIGGER agent_targets_notify AFTER INSERT OR UPDATE OR DELETE ON agent_targets
    FOR EACH ROW EXECUTE FUNCTION stackyard_notify_state();

CREATE FUNCTION stackyard_notify_agent() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('stackyard_agents', json_build_object(
        'agent_id', NEW.id,
        'at', extract(epoch FROM clock_timestamp()))::text);
    RETURN NULL;
END;
$$;

CREATE TRIGGER agents_notify AFTER UPDATE OF last_heartbeat, status ON agents
    FOR EACH ROW EXECUTE FUNCTION stackyard_notify_agent();

CREATE FUNCTION stackyard_notify_event() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('stackyard_events', json_build_object(
        'agent_id', NEW.agent_id,
        'stack_id', (SELECT stack_id FROM deployment_objects WHERE id = NEW.deployment_object_id),
        'at', extract(epoch FROM clock_timestamp()))::text);
    RETURN NULL;
END;
$$;

CREATE TRIGGER agent_events_notify AFTER INSERT ON agent_events
    FOR EACH ROW EXECUTE FUNCTION stackyard_notify_event();
