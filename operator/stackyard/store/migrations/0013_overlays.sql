-- Per-cluster customization (docs/architecture.md, "Overlays"): a version's overlays are stored with it,
-- immutable and covered by its checksum; each agent's rendering follows its labels, so a relabelled agent is
-- told its state changed; and an agent reports the checksum of the rendering it applied.

ALTER TABLE deployment_objects ADD COLUMN overlays JSONB CHECK (overlays IS NULL OR jsonb_typeof(overlays) = 'array');

ALTER TABLE agent_events ADD COLUMN checksum TEXT CHECK (checksum IS NULL OR length(checksum) <= 128);

-- Immutable as before (0012), overlays included.
CREATE OR REPLACE FUNCTION stackyard_deployment_object_immutable() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.is_deletion_marker THEN
        RETURN NEW;
    END IF;
    IF NEW.overlays IS DISTINCT FROM OLD.overlays THEN
        RAISE EXCEPTION 'deployment object % is immutable: only deleted_at may change', OLD.id
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    IF COALESCE(current_setting('stackyard.reseal', true), '') = 'on' AND OLD.key_id IS NOT NULL
       AND NEW.id IS NOT DISTINCT FROM OLD.id
       AND NEW.sequence_id IS NOT DISTINCT FROM OLD.sequence_id
       AND NEW.stack_id IS NOT DISTINCT FROM OLD.stack_id
       AND NEW.submitted_at IS NOT DISTINCT FROM OLD.submitted_at
       AND NEW.is_deletion_marker IS NOT DISTINCT FROM OLD.is_deletion_marker
       AND NEW.deleted_at IS NOT DISTINCT FROM OLD.deleted_at THEN
        RETURN NEW;
    END IF;
    IF NEW.id IS DISTINCT FROM OLD.id
       OR NEW.sequence_id IS DISTINCT FROM OLD.sequence_id
       OR NEW.stack_id IS DISTINCT FROM OLD.stack_id
       OR NEW.yaml_content IS DISTINCT FROM OLD.yaml_content
       OR NEW.yaml_checksum IS DISTINCT FROM OLD.yaml_checksum
       OR NEW.key_id IS DISTINCT FROM OLD.key_id
       OR NEW.submitted_at IS DISTINCT FROM OLD.submitted_at
       OR NEW.is_deletion_marker IS DISTINCT FROM OLD.is_deletion_marker THEN
        RAISE EXCEPTION 'deployment object % is immutable: only deleted_at may change', OLD.id
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    RETURN NEW;
END;
$$;

-- An agent's labels changed: its rendering of every stack with overlays may have, so its cached ETag goes and
-- its long-poll wakes (the payload names it, as a target row's does).
CREATE FUNCTION stackyard_notify_relabel() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.selector_labels IS DISTINCT FROM OLD.selector_labels THEN
        PERFORM pg_notify('stackyard_state', json_build_object(
            'agent', NEW.name, 'cluster', NEW.cluster_name)::text);
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER agents_notify_relabel AFTER UPDATE OF selector_labels ON agents
    FOR EACH ROW EXECUTE FUNCTION stackyard_notify_relabel();
