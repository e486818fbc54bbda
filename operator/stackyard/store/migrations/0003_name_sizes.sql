-- A stack row is named "<namespace>/<name>": Kubernetes allows 63 + 1 + 253 = 317 characters.
-- Widening a VARCHAR is a catalog-only change in PostgreSQL (no table rewrite).
ALTER TABLE stacks ALTER COLUMN name TYPE VARCHAR(317);
