-- stackyard initial schema: the seven tables of the data model
-- (docs/architecture.md, "Data model and its rules") and the rules the
-- database enforces on them.

-- Timestamps -----------------------------------------------------------------

CREATE FUNCTION stackyard_set_timestamps() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        NEW.created_at := COALESCE(NEW.created_at, now());
    ELSE
        NEW.created_at := OLD.created_at;
    END IF;
    NEW.updated_at := now();
    RETURN NEW;
END;
$$;

-- Tables ---------------------------------------------------------------------

CREATE TABLE stacks (
    id           UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    deleted_at   TIMESTAMPTZ,
    name         VARCHAR(255) NOT NULL CHECK (name <> ''),
    description  TEXT,
    agent_target UUID NULL
);

CREATE TABLE agents (
    id             UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    deleted_at     TIMESTAMPTZ,
    name           VARCHAR(255) NOT NULL CHECK (name <> ''),
    cluster_name   VARCHAR(255) NOT NULL CHECK (cluster_name <> ''),
    last_heartbeat TIMESTAMPTZ,
    status         VARCHAR(50) NOT NULL DEFAULT 'PENDING',
    pak_hash       TEXT
);

CREATE TABLE deployment_objects (
    id                 UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    created_at         TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at         TIMESTAMPTZ NOT NULL DEFAULT now(),
    deleted_at         TIMESTAMPTZ,
    sequence_id        BIGSERIAL NOT NULL UNIQUE,
    stack_id           UUID NOT NULL REFERENCES stacks (id),
    yaml_content       TEXT NOT NULL,
    yaml_checksum      TEXT NOT NULL CHECK (yaml_checksum ~ '^[0-9a-f]{64}$'),
    submitted_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    is_deletion_marker BOOLEAN NOT NULL DEFAULT false
);

CREATE TABLE agent_events (
    id                   UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    created_at           TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at           TIMESTAMPTZ NOT NULL DEFAULT now(),
    deleted_at           TIMESTAMPTZ,
    agent_id             UUID NOT NULL REFERENCES agents (id),
    deployment_object_id UUID NOT NULL REFERENCES deployment_objects (id),
    event_type           VARCHAR(50) NOT NULL,
    status               VARCHAR(10) NOT NULL CHECK (status IN ('SUCCESS', 'FAILURE')),
    message              TEXT
);

CREATE TABLE agent_targets (
    id           UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    stack_id     UUID NOT NULL REFERENCES stacks (id),
    agent_name   TEXT NOT NULL CHECK (agent_name <> ''),
    cluster_name TEXT NOT NULL CHECK (cluster_name <> ''),
    CONSTRAINT agent_targets_stack_agent_cluster_key UNIQUE (stack_id, agent_name, cluster_name)
);

CREATE TABLE labels (
    id                 UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    external_object_id UUID NOT NULL,
    label              VARCHAR(255) NOT NULL CHECK (label <> ''),
    CONSTRAINT labels_object_label_key UNIQUE (external_object_id, label)
);

CREATE TABLE annotations (
    id                 UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    external_object_id UUID NOT NULL,
    key                VARCHAR(255) NOT NULL CHECK (key <> ''),
    value              TEXT NOT NULL,
    CONSTRAINT annotations_object_key_key UNIQUE (external_object_id, key)
);

CREATE TRIGGER stacks_timestamps BEFORE INSERT OR UPDATE ON stacks
    FOR EACH ROW EXECUTE FUNCTION stackyard_set_timestamps();
CREATE TRIGGER agents_timestamps BEFORE INSERT OR UPDATE ON agents
    FOR EACH ROW EXECUTE FUNCTION stackyard_set_timestamps();
CREATE TRIGGER deployment_objects_timestamps BEFORE INSERT OR UPDATE ON deployment_objects
    FOR EACH ROW EXECUTE FUNCTION stackyard_set_timestamps();
CREATE TRIGGER agent_events_timestamps BEFORE INSERT OR UPDATE ON agent_events
    FOR EACH ROW EXECUTE FUNCTION stackyard_set_timestamps();

-- Live names are unique; a name can be reused after soft delete ---------------

CREATE UNIQUE INDEX stacks_live_name_key ON stacks (name) WHERE deleted_at IS NULL;
CREATE UNIQUE INDEX agents_live_name_cluster_key ON agents (name, cluster_name) WHERE deleted_at IS NULL;

-- Indexes for foreign keys and hot queries -------------------------------------

-- latest deployment object per stack; also serves the stack_id foreign key
CREATE INDEX deployment_objects_stack_sequence_idx ON deployment_objects (stack_id, sequence_id DESC);
-- desired state: targets by agent
CREATE INDEX agent_targets_agent_cluster_idx ON agent_targets (agent_name, cluster_name);
-- events by agent and time; also serves the agent_id foreign key
CREATE INDEX agent_events_agent_created_idx ON agent_events (agent_id, created_at DESC);
CREATE INDEX agent_events_deployment_object_idx ON agent_events (deployment_object_id);
-- authentication: agents by PAK hash
CREATE INDEX agents_pak_hash_idx ON agents (pak_hash) WHERE deleted_at IS NULL;
-- retention scans
CREATE INDEX stacks_deleted_at_idx ON stacks (deleted_at) WHERE deleted_at IS NOT NULL;
CREATE INDEX agents_deleted_at_idx ON agents (deleted_at) WHERE deleted_at IS NOT NULL;
CREATE INDEX deployment_objects_deleted_at_idx ON deployment_objects (deleted_at) WHERE deleted_at IS NOT NULL;
CREATE INDEX agent_events_deleted_at_idx ON agent_events (deleted_at) WHERE deleted_at IS NOT NULL;

-- Deployment objects are immutable ---------------------------------------------

CREATE FUNCTION stackyard_deployment_object_immutable() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.is_deletion_marker THEN
        RETURN NEW;
    END IF;
    IF NEW.id IS DISTINCT FROM OLD.id
       OR NEW.sequence_id IS DISTINCT FROM OLD.sequence_id
       OR NEW.stack_id IS DISTINCT FROM OLD.stack_id
       OR NEW.yaml_content IS DISTINCT FROM OLD.yaml_content
       OR NEW.yaml_checksum IS DISTINCT FROM OLD.yaml_checksum
       OR NEW.submitted_at IS DISTINCT FROM OLD.submitted_at
       OR NEW.is_deletion_marker IS DISTINCT FROM OLD.is_deletion_marker THEN
        RAISE EXCEPTION 'deployment object % is immutable: only deleted_at may change', OLD.id
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER deployment_objects_immutable BEFORE UPDATE ON deployment_objects
    FOR EACH ROW EXECUTE FUNCTION stackyard_deployment_object_immutable();

CREATE FUNCTION stackyard_hard_delete_allowed() RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT COALESCE(current_setting('stackyard.hard_delete', true), '') = 'on'
$$;

CREATE FUNCTION stackyard_guard_hard_delete() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT stackyard_hard_delete_allowed() THEN
        RAISE EXCEPTION 'rows of % are removed only through the stackyard_hard_delete_* functions', TG_TABLE_NAME
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    RETURN OLD;
END;
$$;

CREATE TRIGGER deployment_objects_guard_delete BEFORE DELETE ON deployment_objects
    FOR EACH ROW EXECUTE FUNCTION stackyard_guard_hard_delete();
CREATE TRIGGER stacks_guard_delete BEFORE DELETE ON stacks
    FOR EACH ROW EXECUTE FUNCTION stackyard_guard_hard_delete();
CREATE TRIGGER agents_guard_delete BEFORE DELETE ON agents
    FOR EACH ROW EXECUTE FUNCTION stackyard_guard_hard_delete();

-- Soft delete cascades -----------------------------------------------------------

CREATE FUNCTION stackyard_stack_soft_deleted() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE deployment_objects SET deleted_at = NEW.deleted_at
     WHERE stack_id = NEW.id AND deleted_at IS NULL;
    INSERT INTO deployment_objects (stack_id, yaml_content, yaml_checksum, is_deletion_marker)
    VALUES (NEW.id, '', encode(sha256(''::bytea), 'hex'), true);
    RETURN NEW;
END;
$$;

CREATE TRIGGER stacks_soft_delete AFTER UPDATE OF deleted_at ON stacks
    FOR EACH ROW WHEN (OLD.deleted_at IS NULL AND NEW.deleted_at IS NOT NULL)
    EXECUTE FUNCTION stackyard_stack_soft_deleted();

CREATE FUNCTION stackyard_stack_no_undelete() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'stack % is soft-deleted and cannot be restored; create a new stack', OLD.id
        USING ERRCODE = 'integrity_constraint_violation';
END;
$$;

CREATE TRIGGER stacks_no_undelete BEFORE UPDATE OF deleted_at ON stacks
    FOR EACH ROW WHEN (OLD.deleted_at IS NOT NULL AND NEW.deleted_at IS NULL)
    EXECUTE FUNCTION stackyard_stack_no_undelete();

CREATE FUNCTION stackyard_agent_soft_deleted() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE agent_events SET deleted_at = NEW.deleted_at
     WHERE agent_id = NEW.id AND deleted_at IS NULL;
    RETURN NEW;
END;
$$;

CREATE TRIGGER agents_soft_delete AFTER UPDATE OF deleted_at ON agents
    FOR EACH ROW WHEN (OLD.deleted_at IS NULL AND NEW.deleted_at IS NOT NULL)
    EXECUTE FUNCTION stackyard_agent_soft_deleted();

-- Labels and annotations have no foreign key: remove them with their object ------

CREATE FUNCTION stackyard_drop_metadata() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM labels WHERE external_object_id = OLD.id;
    DELETE FROM annotations WHERE external_object_id = OLD.id;
    RETURN OLD;
END;
$$;

CREATE TRIGGER stacks_drop_metadata AFTER DELETE ON stacks
    FOR EACH ROW EXECUTE FUNCTION stackyard_drop_metadata();
CREATE TRIGGER agents_drop_metadata AFTER DELETE ON agents
    FOR EACH ROW EXECUTE FUNCTION stackyard_drop_metadata();
CREATE TRIGGER deployment_objects_drop_metadata AFTER DELETE ON deployment_objects
    FOR EACH ROW EXECUTE FUNCTION stackyard_drop_metadata();
CREATE TRIGGER agent_events_drop_metadata AFTER DELETE ON agent_events
    FOR EACH ROW EXECUTE FUNCTION stackyard_drop_metadata();
CREATE TRIGGER agent_targets_drop_metadata AFTER DELETE ON agent_targets
    FOR EACH ROW EXECUTE FUNCTION stackyard_drop_metadata();

-- Hard delete: an object and everything that hangs off it -------------------------

CREATE FUNCTION stackyard_hard_delete_stack(p_stack_id UUID) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    deleted boolean;
BEGIN
    PERFORM set_config('stackyard.hard_delete', 'on', true);
    DELETE FROM agent_events WHERE deployment_object_id IN
        (SELECT id FROM deployment_objects WHERE stack_id = p_stack_id);
    DELETE FROM deployment_objects WHERE stack_id = p_stack_id;
    DELETE FROM agent_targets WHERE stack_id = p_stack_id;
    DELETE FROM stacks WHERE id = p_stack_id;
    deleted := FOUND;
    PERFORM set_config('stackyard.hard_delete', 'off', true);
    RETURN deleted;
END;
$$;

CREATE FUNCTION stackyard_hard_delete_agent(p_agent_id UUID) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    deleted boolean;
BEGIN
    PERFORM set_config('stackyard.hard_delete', 'on', true);
    DELETE FROM agent_events WHERE agent_id = p_agent_id;
    DELETE FROM agents WHERE id = p_agent_id;
    deleted := FOUND;
    PERFORM set_config('stackyard.hard_delete', 'off', true);
    RETURN deleted;
END;
$$;

CREATE FUNCTION stackyard_hard_delete_deployment_object(p_id UUID) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    deleted boolean;
BEGIN
    PERFORM set_config('stackyard.hard_delete', 'on', true);
    DELETE FROM agent_events WHERE deployment_object_id = p_id;
    DELETE FROM deployment_objects WHERE id = p_id;
    deleted := FOUND;
    PERFORM set_config('stackyard.hard_delete', 'off', true);
    RETURN deleted;
END;
$$;

-- Retention: hard-delete soft-deleted rows older than an age; returns rows purged

CREATE FUNCTION stackyard_purge_soft_deleted(p_older_than INTERVAL)
RETURNS TABLE (kind TEXT, purged BIGINT)
LANGUAGE plpgsql AS $$
DECLARE
    cutoff TIMESTAMPTZ := now() - p_older_than;
    n BIGINT;
    r RECORD;
BEGIN
    n := 0;
    FOR r IN SELECT id FROM stacks WHERE deleted_at < cutoff LOOP
        PERFORM stackyard_hard_delete_stack(r.id);
        n := n + 1;
    END LOOP;
    kind := 'stacks'; purged := n; RETURN NEXT;

    n := 0;
    FOR r IN SELECT id FROM agents WHERE deleted_at < cutoff LOOP
        PERFORM stackyard_hard_delete_agent(r.id);
        n := n + 1;
    END LOOP;
    kind := 'agents'; purged := n; RETURN NEXT;

    n := 0;
    FOR r IN SELECT id FROM deployment_objects WHERE deleted_at < cutoff LOOP
        PERFORM stackyard_hard_delete_deployment_object(r.id);
        n := n + 1;
    END LOOP;
    kind := 'deployment_objects'; purged := n; RETURN NEXT;

    DELETE FROM agent_events WHERE deleted_at < cutoff;
    GET DIAGNOSTICS n = ROW_COUNT;
    kind := 'agent_events'; purged := n; RETURN NEXT;
END;
$$;
