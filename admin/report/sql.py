"""The report's SQL: one text for both ledgers (`?` placeholders). Spend reads the hourly
roll-ups over [start, end); persona figures need raw rows (the roll-ups keep no persona)."""

from __future__ import annotations

_SPEND = """
SELECT {column}, sum(requests), sum(hits), sum(cost), sum(saved_cost)
FROM ai_usage_tenant_hourly WHERE hour >= ? AND hour < ?
GROUP BY 1 ORDER BY 1"""
SPEND_COLUMNS = {"model": "model", "tenant": "tenant", "endpoint": "request_type"}
SPEND = {name: _SPEND.format(column=column) for name, column in SPEND_COLUMNS.items()}

_PERSONA = """
SELECT p.key, p.value, count(*), sum(CASE WHEN ai_requests.cache_hit THEN 1 ELSE 0 END),
       coalesce(sum(ai_requests.saved_cost), 0)
FROM ai_requests, {each}(ai_requests.persona) p
WHERE ai_requests.created_at >= ? AND ai_requests.created_at < ?
GROUP BY 1, 2 ORDER BY 1, 2"""
PERSONA = {
    "postgres": _PERSONA.format(each="jsonb_each_text"),
    "sqlite": _PERSONA.format(each="json_each"),
}

# This period's spend per tenant, and per (tenant, user), for the budgets near their limits.
TENANT_SPEND = """
SELECT tenant, sum(cost) FROM ai_usage_tenant_hourly WHERE hour >= ? GROUP BY 1 ORDER BY 1"""
USER_SPEND = """
SELECT tenant, user_id, sum(cost) FROM ai_usage_hourly
WHERE hour >= ? AND user_id <> '' GROUP BY 1, 2 ORDER BY 1, 2"""
