-- Every token kind a provider bills, and the service tier (docs/design.md §11): the prompt
-- tokens written to the provider's prompt cache and the completion tokens spent reasoning
-- (parts of prompt_tokens and completion_tokens, priced at rates of their own), and the tier
-- that served the call ('flex'; NULL: standard). Rows written before this read 0 and NULL.
-- Appended at the end: records.LedgerRecord's fields follow the table.
ALTER TABLE ai_requests ADD COLUMN IF NOT EXISTS cache_write_tokens integer NOT NULL DEFAULT 0;
ALTER TABLE ai_requests ADD COLUMN IF NOT EXISTS reasoning_tokens integer NOT NULL DEFAULT 0;
ALTER TABLE ai_requests ADD COLUMN IF NOT EXISTS service_tier text;
-- Both roll-ups sum the two token kinds too (the dashboard reads them, never raw rows).
ALTER TABLE ai_usage_hourly ADD COLUMN IF NOT EXISTS cache_write_tokens bigint NOT NULL DEFAULT 0;
ALTER TABLE ai_usage_hourly ADD COLUMN IF NOT EXISTS reasoning_tokens bigint NOT NULL DEFAULT 0;
ALTER TABLE ai_usage_tenant_hourly
    ADD COLUMN IF NOT EXISTS cache_write_tokens bigint NOT NULL DEFAULT 0;
ALTER TABLE ai_usage_tenant_hourly
    ADD COLUMN IF NOT EXISTS reasoning_tokens bigint NOT NULL DEFAULT 0;
