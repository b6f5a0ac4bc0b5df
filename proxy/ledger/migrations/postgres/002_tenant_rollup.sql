-- A second hourly roll-up, per tenant, model and request type (no user): the dashboard's
-- totals, costs and hit rates over long windows read it, since the per-user roll-up grows with
-- every active user and a 30-day answer would add up hundreds of thousands of its rows.
-- Kept by the ledger writer in the same statement as the other; filled here from it once.
CREATE TABLE IF NOT EXISTS ai_usage_tenant_hourly (
    hour              timestamptz NOT NULL,
    tenant            text NOT NULL,
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
    PRIMARY KEY (hour, tenant, model, request_type)
);

INSERT INTO ai_usage_tenant_hourly
SELECT hour, tenant, model, request_type, sum(requests), sum(hits), sum(errors),
       sum(prompt_tokens), sum(completion_tokens), sum(cached_tokens),
       sum(cost), sum(saved_cost), sum(response_ms_sum)
FROM ai_usage_hourly
GROUP BY hour, tenant, model, request_type
ON CONFLICT DO NOTHING;
