-- Tenancy: an AgentTarget may bind only an Agent of its own namespace, or an Agent that grants its
-- namespace (spec.allowedNamespaces, and namespaces matching spec.allowedNamespaceSelector, resolved by
-- the operator). The rule lives here, so no code path can write a target row it forbids
-- (docs/architecture.md, "Tenancy").

ALTER TABLE agents ADD COLUMN namespace TEXT;                                   -- NULL: registered before 0005
ALTER TABLE agents ADD COLUMN allowed_namespaces TEXT[] NOT NULL DEFAULT '{}';

ALTER TABLE agent_targets ADD COLUMN namespace TEXT;
UPDATE agent_targets t SET namespace = split_part(s.name, '/', 1) FROM stacks s WHERE s.id = t.stack_id;
ALTER TABLE agent_targets ALTER COLUMN namespace SET NOT NULL;

-- True when a target in `target_namespace` may point at the agent (name, cluster): no live agent of that
-- name exists yet (nobody receives the row; the agent's registration re-checks), or the live agent is in
-- that namespace, grants it, or was registered before namespaces were recorded.
CREATE FUNCTION stackyard_target_permitted(target_namespace TEXT, agent TEXT, cluster TEXT) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT NOT EXISTS (
        SELECT 1 FROM agents a
         WHERE a.name = agent AND a.cluster_name = cluster AND a.deleted_at IS NULL
           AND a.namespace IS NOT NULL
           AND a.namespace <> target_namespace
           AND NOT (target_namespace = ANY (a.allowed_namespaces)))
$$;

CREATE FUNCTION stackyard_check_target_permitted() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    -- A row written without a namespace (the data model's columns only) belongs to its Stack's namespace.
    IF NEW.namespace IS NULL THEN
        SELECT split_part(name, '/', 1) INTO NEW.namespace FROM stacks WHERE id = NEW.stack_id;
    END IF;
    IF NOT stackyard_target_permitted(NEW.namespace, NEW.agent_name, NEW.cluster_name) THEN
        RAISE EXCEPTION 'AgentNotPermitted: agent % in cluster % does not accept targets from namespace %',
            NEW.agent_name, NEW.cluster_name, NEW.namespace
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER agent_targets_permitted BEFORE INSERT OR UPDATE ON agent_targets
    FOR EACH ROW EXECUTE FUNCTION stackyard_check_target_permitted();

-- An agent registered or changed (namespace, grants): targets it does not permit stop at once. Their
-- stacks leave its desired state, so the agent removes their objects after its deletion grace period.
CREATE FUNCTION stackyard_prune_unpermitted_targets() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.deleted_at IS NULL THEN
        DELETE FROM agent_targets t
         WHERE t.agent_name = NEW.name AND t.cluster_name = NEW.cluster_name
           AND NOT stackyard_target_permitted(t.namespace, t.agent_name, t.cluster_name);
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER agents_prune_unpermitted_targets
    AFTER INSERT OR UPDATE OF namespace, allowed_namespaces, name, cluster_name, deleted_at ON agents
    FOR EACH ROW EXECUTE FUNCTION stackyard_prune_unpermitted_targets();
