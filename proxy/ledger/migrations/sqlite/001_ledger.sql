-- The SQLite twin of postgres/001_ledger.sql (the embedded default). Timestamps are UTC text,
-- 'YYYY-MM-DDTHH:MM:SS.ffffffZ' (roll-up hours: 'YYYY-MM-DDTHH:00:00.000000Z'): it sorts in time
-- order and SQLite's date functions read it. persona, target and detail are JSON text.

CREATE TABLE IF NOT EXISTS ai_requests (
    id                TEXT PRIMARY KEY,
    tenant            TEXT NOT NULL,
    user_id           TEXT,
    persona           TEXT NOT NULL DEFAULT '{}',
    request_type      TEXT NOT NULL,
    model             TEXT NOT NULL,
    prompt_tokens     INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    cached_tokens     INTEGER NOT NULL DEFAULT 0,
    cost              REAL NOT NULL DEFAULT 0,
    saved_cost        REAL NOT NULL DEFAULT 0,
    response_time_ms  REAL NOT NULL DEFAULT 0,
    upstream_ms       REAL,
    cache_hit         INTEGER NOT NULL DEFAULT 0,
    cache_status      TEXT NOT NULL,
    status            INTEGER NOT NULL,
    created_at        TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS ai_requests_user_created ON ai_requests (user_id, created_at DESC);
CREATE INDEX IF NOT EXISTS ai_requests_tenant_created ON ai_requests (tenant, created_at DESC);
CREATE INDEX IF NOT EXISTS ai_requests_created ON ai_requests (created_at DESC);

CREATE TABLE IF NOT EXISTS ai_usage_hourly (
    hour              TEXT NOT NULL,
    tenant            TEXT NOT NULL,
    user_id           TEXT NOT NULL DEFAULT '',
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
    PRIMARY KEY (hour, tenant, user_id, model, request_type)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS ai_usage_hourly_tenant_hour ON ai_usage_hourly (tenant, hour DESC);
CREATE INDEX IF NOT EXISTS ai_usage_hourly_user_hour ON ai_usage_hourly (user_id, hour DESC);

CREATE TABLE IF NOT EXISTS admin_audit (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    at         TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    admin_user TEXT,
    action     TEXT NOT NULL,
    target     TEXT NOT NULL DEFAULT '{}',
    detail     TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS admin_audit_at ON admin_audit (at DESC);

CREATE TABLE IF NOT EXISTS budget_overrides (
    scope       TEXT NOT NULL CHECK (scope IN ('tenant', 'user')),
    subject     TEXT NOT NULL,
    daily_usd   REAL CHECK (daily_usd >= 0),
    monthly_usd REAL CHECK (monthly_usd >= 0),
    updated_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    PRIMARY KEY (scope, subject)
);
