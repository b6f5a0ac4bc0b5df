-- What the report needs to tell which persona dimensions never changed an answer
-- (docs/design.md §14): request_digest, a digest of the request without its persona scope
-- (the same question from different personas shares it), and answer_digest, the first 16 hex
-- of the SHA-256 of the answer's body. NULL where the proxy did not know them (rows before
-- this migration, requests that neither stored nor served a stored answer).
-- Appended at the end: records.LedgerRecord's fields follow the table.
ALTER TABLE ai_requests ADD COLUMN IF NOT EXISTS request_digest text;
ALTER TABLE ai_requests ADD COLUMN IF NOT EXISTS answer_digest text;
