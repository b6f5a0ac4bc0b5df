-- The SQLite twin of postgres/005_answer_digests.sql (schema_migrations keeps it from
-- running twice).
ALTER TABLE ai_requests ADD COLUMN request_digest TEXT;
ALTER TABLE ai_requests ADD COLUMN answer_digest TEXT;
