-- Tenancy checks without write skew. Under READ COMMITTED, a target row checked while an Agent's
-- registration was still uncommitted saw no agent (permitted), and the registration's prune did not see the
-- uncommitted target row: both committed, and a forbidden row stayed in the agent's desired state. Both
-- triggers now take one transaction-scoped advisory lock per (agent, cluster) before they look, so one of
-- them always runs after the other has committed and sees its row (each statement of a plpgsql function
-- takes a fresh snapshot under READ COMMITTED).

CREATE FUNCTION stackyard_lock_agent_pair(agent TEXT, cluster TEXT) RETURNS void
LANGUAGE sql VOLATILE AS $$
    -- 0x73790001: stackyard's class of advisory locks (migrations use their own key).
    SELECT pg_advisory_xact_lock(1937309697, hashtext(agent || E'\x1f' || cluster))
$$;

CREATE OR REPLACE FUNCTION stackyard_check_target_permitted() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    -- A row written without a namespace (the data model's columns only) belongs to its Stack's namespace.
    IF NEW.namespace IS NULL THEN
        SELECT split_part(name, '/', 1) INTO NEW.namespace FROM stacks WHERE id = NEW.stack_id;
    END IF;
    PERFORM stackyard_lock_agent_pair(NEW.agent_name, NEW.cluster_name);
    IF NOT stackyard_target_permitted(NEW.namespace, NEW.agent_name, NEW.cluster_name) THEN
        RAISE EXCEPTION 'AgentNotPermitted: agent % in cluster % does not accept targets from namespace %',
            NEW.agent_name, NEW.cluster_name, NEW.namespace
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END;
$$;

CREATE OR REPLACE FUNCTION stackyard_prune_unpermitted_targets() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.deleted_at IS NULL THEN
        PERFORM stackyard_lock_agent_pair(NEW.name, NEW.cluster_name);
        DELETE FROM agent_targets t
         WHERE t.agent_name = NEW.name AND t.cluster_name = NEW.cluster_name
           AND NOT stackyard_target_permitted(t.namespace, t.agent_name, t.cluster_name);
    END IF;
    RETURN NULL;
END;
$$;
