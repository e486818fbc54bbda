-- The Agent resource's metadata.labels, which label-selector AgentTargets select by
-- (docs/architecture.md, "Tenancy" and "Selectors"). Distinct from the `labels` table, which keeps
-- spec.labels as the data model has it.
ALTER TABLE agents ADD COLUMN selector_labels JSONB NOT NULL DEFAULT '{}';
