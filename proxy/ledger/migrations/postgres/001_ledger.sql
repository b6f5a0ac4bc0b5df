-- The request ledger, its hourly roll-up, the admin audit trail and budget overrides.
-- Applied once (schema_migrations), under pg_advisory_lock; written to be re-runnable anyway.

CREATE TABLE IF NOT EXISTS ai_requests (
    id                uuid PRIMARY KEY,
    tenant            text NOT NULL,
    user_id           text,
    persona           jsonb NOT NULL DEFAULT '{}'::jsonb,
    request_type      text NOT NULL,
    model             text NOT NULL,
    prompt_tokens     integer NOT NULL DEFAULT 0,
    completion_tokens integer NOT NULL DEFAULT 0,
    cached_tokens     integer NOT NULL DEFAULT 0,
    cost              double precision NOT NULL DEFAULT 0,
    saved_cost        double precision NOT NULL DEFAULT 0,
    response_time_ms  double precision NOT NULL DEFAULT 0,
    upstream_ms       double precision,
    cache_hit         boolean NOT NULL DEFAULT false,
    cache_status      text NOT NULL,
    status            integer NOT NULL,
    created_at        timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS ai_requests_user_created ON ai_requests (user_id, created_at DESC);
CREATE INDEX IF NOT EXISTS ai_requests_tenant_created ON ai_requests (tenant, created_at DESC);
-- Time-window scans over every tenant: BRIN, as rows arrive in time order (tiny, and almost
-- free to keep up on insert, unlike a third B-tree).
CREATE INDEX IF NOT EXISTS ai_requests_created ON ai_requests USING brin (created_at);

-- Kept up to date by the ledger writer in the transaction that inserts the raw rows.
-- user_id is '' for requests without a user, so the primary key covers every row.
CREATE TABLE IF NOT EXISTS ai_usage_hourly (
    hour              timestamptz NOT NULL,
    tenant            text NOT NULL,
    user_id           text NOT NULL DEFAULT '',
    model             text NOT NULL,
    request_type      text NOT NULL,
    requests          bigint NOT NULL DEFAULT 0,
    hits              bigint NOT NULL DEFAULT 0,
    errors            bigint NOT NULL DEFAULT 0,
    prompt_tokens     bigint NOT NULL DEFAULT 0,
    completion_tokens bigint NOT NULL DEFAULT 0,
    cached_tokens     bigint NOT NULL DEFAULT 0,
    cost              double precision NOT NULL DEFAULT 0,
    saved_cost        double precision NOT NULL DEFAULT 0,
    response_ms_sum   double precision NOT NULL DEFAULT 0,
    PRIMARY KEY (hour, tenant, user_id, model, request_type)
);
CREATE INDEX IF NOT EXISTS ai_usage_hourly_tenant_hour ON ai_usage_hourly (tenant, hour DESC);
CREATE INDEX IF NOT EXISTS ai_usage_hourly_user_hour ON ai_usage_hourly (user_id, hour DESC);

CREATE TABLE IF NOT EXISTS admin_audit (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at         timestamptz NOT NULL DEFAULT now(),
    admin_user text,
    action     text NOT NULL,
    target     jsonb NOT NULL DEFAULT '{}'::jsonb,
    detail     jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX IF NOT EXISTS admin_audit_at ON admin_audit (at DESC);

-- NULL limit: the configured default applies; 0: unlimited.
CREATE TABLE IF NOT EXISTS budget_overrides (
    scope       text NOT NULL CHECK (scope IN ('tenant', 'user')),
    subject     text NOT NULL,
    daily_usd   double precision CHECK (daily_usd >= 0),
    monthly_usd double precision CHECK (monthly_usd >= 0),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (scope, subject)
);
