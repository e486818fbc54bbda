-- Least privilege in target clusters (docs/architecture.md, "Impersonation"): an Agent maps management
-- namespaces to service accounts of its cluster; the agent applies each stack as the account its namespace maps
-- to. The operator resolves namespace selectors into names (as for grants, 0005); the decision per target is
-- this function's, so the desired state, the ETag and the status read one rule.

-- [{"namespaces": [names], "serviceAccount": {"namespace": ..., "name": ...}}, ...] in the Agent's order.
ALTER TABLE agents ADD COLUMN impersonate JSONB NOT NULL DEFAULT '[]'
    CHECK (jsonb_typeof(impersonate) = 'array');
ALTER TABLE agents ADD COLUMN impersonation_required BOOLEAN NOT NULL DEFAULT false;

-- How the agent (name, cluster) applies a stack from `target_namespace`: {"serviceAccount": {...}} (the first
-- entry naming that namespace), {"refused": true} (none does and the Agent requires impersonation), or NULL
-- (as the agent itself).
CREATE FUNCTION stackyard_apply_as(agent TEXT, cluster TEXT, target_namespace TEXT) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT CASE
               WHEN found.rule IS NOT NULL THEN jsonb_build_object('serviceAccount', found.rule -> 'serviceAccount')
               WHEN found.required THEN jsonb_build_object('refused', true)
           END
      FROM (SELECT a.impersonation_required AS required,
                   (SELECT x.rule FROM jsonb_array_elements(a.impersonate) WITH ORDINALITY AS x(rule, position)
                     WHERE x.rule -> 'namespaces' ? target_namespace
                     ORDER BY x.position LIMIT 1) AS rule
              FROM agents a
             WHERE a.name = agent AND a.cluster_name = cluster AND a.deleted_at IS NULL) found
$$;

-- An agent's labels (0013) or its impersonation changed: what it receives may have, so its cached ETag goes and
-- its long-poll wakes.
CREATE OR REPLACE FUNCTION stackyard_notify_relabel() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.selector_labels IS DISTINCT FROM OLD.selector_labels
       OR NEW.impersonate IS DISTINCT FROM OLD.impersonate
       OR NEW.impersonation_required IS DISTINCT FROM OLD.impersonation_required THEN
        PERFORM pg_notify('stackyard_state', json_build_object(
            'agent', NEW.name, 'cluster', NEW.cluster_name)::text);
    END IF;
    RETURN NULL;
END;
$$;

DROP TRIGGER agents_notify_relabel ON agents;
CREATE TRIGGER agents_notify_relabel AFTER UPDATE OF selector_labels, impersonate, impersonation_required ON agents
    FOR EACH ROW EXECUTE FUNCTION stackyard_notify_relabel();
