-- The public id of an agent's key (the `sy_<id>_` part): a key authenticates only with the id it was issued
-- with. NULL for keys issued before this column existed; those are checked by their secret alone.
ALTER TABLE agents ADD COLUMN pak_key_id TEXT CHECK (pak_key_id ~ '^[a-z0-9]{8}$');
