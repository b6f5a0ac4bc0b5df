-- The SQLite twin of postgres/004_token_kinds.sql. SQLite has no ADD COLUMN IF NOT EXISTS:
-- schema_migrations is what keeps this from running twice.
ALTER TABLE ai_requests ADD COLUMN cache_write_tokens INTEGER NOT NULL DEFAULT 0;
ALTER TABLE ai_requests ADD COLUMN reasoning_tokens INTEGER NOT NULL DEFAULT 0;
ALTER TABLE ai_requests ADD COLUMN service_tier TEXT;
ALTER TABLE ai_usage_hourly ADD COLUMN cache_write_tokens INTEGER NOT NULL DEFAULT 0;
ALTER TABLE ai_usage_hourly ADD COLUMN reasoning_tokens INTEGER NOT NULL DEFAULT 0;
ALTER TABLE ai_usage_tenant_hourly ADD COLUMN cache_write_tokens INTEGER NOT NULL DEFAULT 0;
ALTER TABLE ai_usage_tenant_hourly ADD COLUMN reasoning_tokens INTEGER NOT NULL DEFAULT 0;
