-- The SQLite twin of postgres/007_override_downgrades.sql: TEXT holding the JSON object
-- (schema_migrations keeps it from running twice).
ALTER TABLE budget_overrides ADD COLUMN downgrade_to TEXT;
