-- Secret data in deployment objects is sealed (docs/architecture.md, "Secrets"): the key that sealed a row's
-- values, and the one sanctioned change to an immutable deployment object, re-sealing under a new key.

-- The id of the key the Secret values of this content are sealed with (NULL: the content holds no Secret data).
ALTER TABLE deployment_objects ADD COLUMN key_id TEXT CHECK (key_id ~ '^[0-9a-f]{8}$');
CREATE INDEX deployment_objects_key_idx ON deployment_objects (key_id) WHERE key_id IS NOT NULL;

-- `stackyard db rotate-key` sets stackyard.reseal for its transaction: the sealed content, its keyed checksum and
-- its key id may then change (the same Secret data, sealed under another key); nothing else, and nothing else
-- ever otherwise.
CREATE OR REPLACE FUNCTION stackyard_deployment_object_immutable() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.is_deletion_marker THEN
        RETURN NEW;
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
