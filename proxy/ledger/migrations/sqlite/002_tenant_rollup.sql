-- A second hourly roll-up, per tenant, model and request type (no user): see the PostgreSQL
-- migration of the same number.
CREATE TABLE IF NOT EXISTS ai_usage_tenant_hourly (
    hour              TEXT NOT NULL,
    tenant            TEXT NOT NULL,
    model             TEXT NOT NULL,
    request_type      TEXT NOT NULL,
    requests          INTEGER NOT NULL DEFAULT 0,
    hits              INTEGER NOT NULL DEFAULT 0,
    errors            INTEGER NOT NULL DEFAULT 0,
    prompt_tokens     INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    cached_tokens     INTEGER NOT NULL DEFAULT 0,
    cost              REAL NOT NULL DEFAULT 0,
    saved_cost        REAL NOT NULL DEFAULT 0,
    response_ms_sum   REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (hour, tenant, model, request_type)
) WITHOUT ROWID;

INSERT OR IGNORE INTO ai_usage_tenant_hourly
SELECT hour, tenant, model, request_type, sum(requests), sum(hits), sum(errors),
       sum(prompt_tokens), sum(completion_tokens), sum(cached_tokens),
       sum(cost), sum(saved_cost), sum(response_ms_sum)
FROM ai_usage_hourly
GROUP BY hour, tenant, model, request_type;
