"""The dashboard's SQL, one text for both ledgers where the dialects agree (`?` placeholders).

Windows over the hourly roll-ups start at the top of the hour `window` ago. Answers that do not
name users read the per-tenant roll-up (`ai_usage_tenant_hourly`, a few rows per tenant and
hour), those about users the per-user one (`ai_usage_hourly`). Two answers need dimensions the
roll-ups do not keep (cache status for latency percentiles, persona values),
so they read raw rows of the window; `performance` reports them and suggests a view. The
semantic figures read only the window's semantic hits (migration 003's partial index)."""

from __future__ import annotations

from itertools import pairwise

TOTALS = """
SELECT coalesce(sum(requests), 0), coalesce(sum(hits), 0), coalesce(sum(errors), 0),
       coalesce(sum(cost), 0), coalesce(sum(saved_cost), 0), coalesce(sum(response_ms_sum), 0),
       coalesce(sum(prompt_tokens), 0), coalesce(sum(completion_tokens), 0),
       coalesce(sum(cached_tokens), 0), coalesce(sum(cache_write_tokens), 0),
       coalesce(sum(reasoning_tokens), 0)
FROM ai_usage_tenant_hourly WHERE hour >= ?"""

GROUP_LATENCY = """
SELECT response_ms_sum / requests, requests
FROM ai_usage_tenant_hourly WHERE hour >= ? AND requests > 0"""

# `{bucket}`, `{label}`, `{column}` and `{table}` come from fixed tables here, never from a request.
# Buckets are grouped first and formatted after: formatting every roll-up row costs more than
# the sums (EXPLAIN on a 10M-row ledger, bench/costs.py).
_COSTS = """
SELECT {label}, grp, requests, cost, saved, {tokens} FROM (
    SELECT {bucket} AS b, {column} AS grp, sum(requests) AS requests, sum(cost) AS cost,
           sum(saved_cost) AS saved, {token_sums}
    FROM {table} WHERE hour >= ? GROUP BY 1, 2) AS t
ORDER BY 1, 2"""
_BUCKETS = {  # bucket -> (what rows are grouped by, its label as an ISO time)
    "postgres": {
        "hour": ("hour", """to_char(b AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24":00:00Z"')"""),
        "day": ("date_trunc('day', hour AT TIME ZONE 'UTC')",
                """to_char(b, 'YYYY-MM-DD"T00:00:00Z"')"""),
    },
    "sqlite": {
        "hour": ("substr(hour, 1, 13) || ':00:00Z'", "b"),
        "day": ("substr(hour, 1, 10) || 'T00:00:00Z'", "b"),
    },
}  # fmt: skip

# Percentiles as the ceil(n * p)-th smallest value (percentile_disc), with window functions
# that both PostgreSQL and SQLite have.
LATENCY = """
WITH r AS (
    SELECT request_type, cache_status, response_time_ms,
           row_number() OVER (PARTITION BY request_type, cache_status
                              ORDER BY response_time_ms) AS rn,
           count(*) OVER (PARTITION BY request_type, cache_status) AS n
    FROM ai_requests WHERE created_at >= ?
)
SELECT request_type, cache_status, max(n), avg(response_time_ms),
       max(CASE WHEN rn = (n * 50 + 99) / 100 THEN response_time_ms END),
       max(CASE WHEN rn = (n * 95 + 99) / 100 THEN response_time_ms END),
       max(CASE WHEN rn = (n * 99 + 99) / 100 THEN response_time_ms END),
       max(response_time_ms)
FROM r GROUP BY 1, 2 ORDER BY 1, 2"""

ERRORS = """
SELECT request_type, status, count(*) FROM ai_requests
WHERE created_at >= ? AND status >= 500
GROUP BY 1, 2 ORDER BY 1, 2"""

_TOP_USERS = """
SELECT tenant, user_id, sum(requests), sum(hits), sum(cost), sum(saved_cost)
FROM ai_usage_hourly WHERE hour >= ? AND user_id <> ''
GROUP BY 1, 2 ORDER BY {order}, 1, 2 LIMIT ?"""
USERS_BY_COST = _TOP_USERS.format(order="5 DESC, 3 DESC")
USERS_BY_REQUESTS = _TOP_USERS.format(order="3 DESC, 5 DESC")

_HIT_RATES = """
SELECT {column}, sum(requests), sum(hits), sum(saved_cost)
FROM ai_usage_tenant_hourly WHERE hour >= ? GROUP BY 1 ORDER BY 1"""
HITS_BY_ENDPOINT = _HIT_RATES.format(column="request_type")
HITS_BY_MODEL = _HIT_RATES.format(column="model")

_PERSONA = """
SELECT p.key, p.value, count(*), sum(CASE WHEN ai_requests.cache_hit THEN 1 ELSE 0 END)
FROM ai_requests, {each}(ai_requests.persona) p
WHERE ai_requests.created_at >= ?
GROUP BY 1, 2 ORDER BY 1, 2"""
PERSONA = {
    "postgres": _PERSONA.format(each="jsonb_each_text"),
    "sqlite": _PERSONA.format(each="json_each"),
}


# The similarity distribution's buckets: [0, 0.5), then [0.50, 0.55) … [0.95, 1.0] in steps of
# 0.05. Bounds are literals compared as they are, so a similarity equal to a bound always lands
# in the bucket it opens (no float arithmetic on the value); the first bucket takes anything
# lower and the last anything higher (a cosine may round a hair past 1).
SIMILARITY_BOUNDS = (0.0, *(round(0.5 + 0.05 * n, 2) for n in range(10)), 1.0)


def _bucket_count(low: float, high: float) -> str:
    tests = [f"similarity >= {low}"] if low > 0.0 else []
    tests += [f"similarity < {high}"] if high < 1.0 else []
    return f"sum(CASE WHEN {' AND '.join(tests)} THEN 1 ELSE 0 END)"


_BUCKET_COUNTS = ",\n       ".join(
    _bucket_count(low, high) for low, high in pairwise(SIMILARITY_BOUNDS)
)
SEMANTIC = f"""
SELECT count(*), coalesce(sum(saved_cost), 0),
       {_BUCKET_COUNTS}
FROM ai_requests WHERE created_at >= ? AND cache_match = 'semantic'"""


# The token kinds every costs row sums, in the order of its last columns (models.CostPoint).
TOKEN_KINDS = ("prompt_tokens", "completion_tokens", "cached_tokens", "cache_write_tokens",
               "reasoning_tokens")  # fmt: skip


def costs(dialect: str, bucket: str, column: str) -> str:
    grouped_by, label = _BUCKETS[dialect][bucket]
    return _COSTS.format(
        bucket=grouped_by,
        label=label,
        column=column,
        table=roll_up_for(column),
        tokens=", ".join(TOKEN_KINDS),
        token_sums=", ".join(f"sum({kind}) AS {kind}" for kind in TOKEN_KINDS),
    )


def roll_up_for(column: str) -> str:
    """The roll-up a costs answer grouped by `column` reads: per user only where it must."""
    return "ai_usage_hourly" if column == "user_id" else "ai_usage_tenant_hourly"
