-- The SQLite twin of postgres/006_upstream.sql (schema_migrations keeps it from running twice).
ALTER TABLE ai_requests ADD COLUMN upstream TEXT;
ALTER TABLE ai_requests ADD COLUMN served_model TEXT;
