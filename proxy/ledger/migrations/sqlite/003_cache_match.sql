-- The SQLite twin of postgres/003_cache_match.sql. SQLite has no ADD COLUMN IF NOT EXISTS:
-- schema_migrations is what keeps this from running twice.
ALTER TABLE ai_requests ADD COLUMN cache_match TEXT;
ALTER TABLE ai_requests ADD COLUMN similarity REAL;
CREATE INDEX IF NOT EXISTS ai_requests_semantic_created ON ai_requests (created_at)
    WHERE cache_match = 'semantic';
