-- How each hit matched (docs/design.md §10): 'exact' or 'semantic', NULL for anything but a
-- hit (and for rows written before this migration, whose hits were all exact), and a semantic
-- hit's similarity. Appended at the end: records.LedgerRecord's fields follow the table.
ALTER TABLE ai_requests ADD COLUMN IF NOT EXISTS cache_match text;
ALTER TABLE ai_requests ADD COLUMN IF NOT EXISTS similarity double precision;
-- The dashboard's semantic figures read the window's semantic hits only: a partial index keeps
-- that a scan of those few rows, not of the window's every request.
CREATE INDEX IF NOT EXISTS ai_requests_semantic_created ON ai_requests (created_at)
    WHERE cache_match = 'semantic';
