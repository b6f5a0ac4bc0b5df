-- Routing and fallbacks (docs/design.md §13): `upstream`, the configured upstream that answered
-- the request's own call (X-Upstream), and `served_model`, the model asked for there. `model`
-- stays the model the client requested (what the cache key, budgets and roll-ups use); the two
-- differ when a fallback named another model ("backup:gpt-4o-mini"). NULL for rows without an
-- upstream call of their own (hits, coalesced followers) and rows before this migration.
-- Appended at the end: records.LedgerRecord's fields follow the table.
ALTER TABLE ai_requests ADD COLUMN IF NOT EXISTS upstream text;
ALTER TABLE ai_requests ADD COLUMN IF NOT EXISTS served_model text;
