-- The agent API caches, per process, who a key belongs to and each agent's ETag (api/cache.py). These
-- notifications invalidate them.

-- A key rotated, an agent deleted, renamed or moved: its cached identity goes at once.
CREATE FUNCTION stackyard_notify_auth() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('stackyard_auth', json_build_object('agent_id', OLD.id, 'pak_hash', OLD.pak_hash)::text);
    RETURN NULL;
END;
$$;

CREATE TRIGGER agents_notify_auth AFTER UPDATE OF pak_hash, pak_key_id, deleted_at, name, cluster_name OR DELETE
    ON agents FOR EACH ROW EXECUTE FUNCTION stackyard_notify_auth();

-- A target row inserted, changed (released) or deleted names its agent: the listener needs no query to find
-- whose state changed, and a deleted row (its agent no longer targeted) is not missed.
CREATE OR REPLACE FUNCTION stackyard_notify_state() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_TABLE_NAME = 'agent_targets' THEN
        IF TG_OP = 'DELETE' THEN
            PERFORM pg_notify('stackyard_state', json_build_object(
                'stack_id', OLD.stack_id, 'agent', OLD.agent_name, 'cluster', OLD.cluster_name)::text);
        ELSE
            PERFORM pg_notify('stackyard_state', json_build_object(
                'stack_id', NEW.stack_id, 'agent', NEW.agent_name, 'cluster', NEW.cluster_name)::text);
            IF TG_OP = 'UPDATE' AND (OLD.agent_name, OLD.cluster_name) <> (NEW.agent_name, NEW.cluster_name) THEN
                PERFORM pg_notify('stackyard_state', json_build_object(
                    'stack_id', OLD.stack_id, 'agent', OLD.agent_name, 'cluster', OLD.cluster_name)::text);
            END IF;
        END IF;
    ELSE
        PERFORM pg_notify('stackyard_state', NEW.stack_id::text);
    END IF;
    RETURN NULL;
END;
$$;
