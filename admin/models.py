"""Wire shapes of the admin JSON API: query and body parameters (validated; a bad one is a 400
naming it) and every answer. The OpenAPI document is generated from these."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Literal

import msgspec

from proxy.failures import InvalidRequest
from proxy.ledger import WriterStats

Window = Literal["1h", "24h", "7d", "30d"]
WINDOWS = {"1h": timedelta(hours=1), "24h": timedelta(hours=24),
           "7d": timedelta(days=7), "30d": timedelta(days=30)}  # fmt: skip
GROUP_COLUMNS = {"model": "model", "user": "user_id", "tenant": "tenant",
                 "request_type": "request_type"}  # fmt: skip


class WindowParams(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    window: Window = "24h"


class PerformanceParams(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    window: Window = "1h"


class CostsParams(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    window: Window = "24h"
    bucket: Literal["hour", "day"] = "hour"
    group_by: Literal["model", "user", "tenant", "request_type"] = "model"


class UsersParams(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    window: Window = "24h"
    limit: Annotated[int, msgspec.Meta(ge=1, le=100)] = 10


# A breaker of proxy.upstream.breakers: a family ("chat") or "<upstream>/<family>".
BreakerName = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_./-]{1,64}$")]


class ResetBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    breaker: BreakerName | None = None  # None: every breaker


# ---- answers -------------------------------------------------------------------------------


class Latency(msgspec.Struct):
    avg_ms: float
    p95_ms_approx: float  # 95th percentile of the roll-up's per-group hourly averages


class Overview(msgspec.Struct):
    window: str
    requests: int
    hits: int
    hit_rate: float
    errors: int
    cost_usd: float
    saved_usd: float
    # Tokens as the ledger counts them (README, "The ledger"): prompt and completion count
    # every token, cached reads, cache writes and reasoning are parts of them; on hits, the
    # tokens avoided.
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    cache_write_tokens: int
    reasoning_tokens: int
    latency: Latency
    unpriced_models: list[str]
    unpriced_requests: int
    ledger: WriterStats


class CostPoint(msgspec.Struct):
    bucket: str  # UTC, e.g. 2026-11-24T03:00:00Z
    group: str
    requests: int
    cost_usd: float
    saved_usd: float
    # As Overview's: paid for on misses, avoided on hits.
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    cache_write_tokens: int
    reasoning_tokens: int


class Costs(msgspec.Struct):
    window: str
    bucket: str
    group_by: str
    series: list[CostPoint]
    total_cost_usd: float
    total_saved_usd: float


class LatencyRow(msgspec.Struct):
    endpoint: str
    cache_status: str
    requests: int
    avg_ms: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float


class ErrorRow(msgspec.Struct):
    endpoint: str
    status: int
    count: int


class TimedQuery(msgspec.Struct):
    name: str
    ms: float
    rows: int


class IndexSuggestion(msgspec.Struct):
    query: str
    kind: str
    reason: str
    sql: str


class Performance(msgspec.Struct):
    window: str
    latency: list[LatencyRow]
    upstream_errors: list[ErrorRow]
    slow_queries: list[TimedQuery]
    suggestions: list[IndexSuggestion]


class BudgetState(msgspec.Struct):
    scope: str
    period: str
    limit_usd: float  # 0: unlimited
    spent_usd: float


class UserRow(msgspec.Struct):
    tenant: str
    user_id: str
    requests: int
    hits: int
    hit_rate: float
    cost_usd: float
    saved_usd: float
    budgets: list[BudgetState] | None  # None: the spend store is unreachable


class Users(msgspec.Struct):
    window: str
    by_cost: list[UserRow]
    by_requests: list[UserRow]


class HitRate(msgspec.Struct):
    key: str
    requests: int
    hits: int
    hit_rate: float
    saved_usd: float


class PersonaHitRate(msgspec.Struct):
    dimension: str
    value: str
    requests: int
    hits: int
    hit_rate: float


class SimilarityBucket(msgspec.Struct):
    """Semantic hits with lower <= similarity < upper; the first bucket (lower 0) also holds
    anything lower and the last (upper 1) anything from its lower bound up, 1.0 included."""

    lower: float
    upper: float
    hits: int


class SemanticStats(msgspec.Struct):
    """How the window's hits matched (docs/design.md §10). A hit without a recorded match (a
    row written before the ledger had the column) counts as exact."""

    enabled: bool  # SEMANTIC_CACHE on this replica
    hits: int
    saved_usd: float
    exact_hits: int
    exact_saved_usd: float
    similarity: list[SimilarityBucket]  # the semantic hits by similarity; every bucket, in order


class CacheStats(msgspec.Struct):
    window: str
    backend: str
    entries: int | None  # None: the store cannot tell cheaply (Redis)
    bytes: int | None
    by_endpoint: list[HitRate]
    by_model: list[HitRate]
    by_persona: list[PersonaHitRate]
    saved_usd: float
    semantic: SemanticStats


class LastFailure(msgspec.Struct):
    at: str
    error: str


class Circuit(msgspec.Struct):
    name: str
    state: str
    failures: int
    last_failure: LastFailure | None
    opened_at: str | None
    opened_count: int
    upstream: str = "default"  # the configured upstream whose calls it guards


class UpstreamHealth(msgspec.Struct):
    """One configured upstream, as this replica has seen it since start-up."""

    name: str
    host: str  # the base URL's host and port (no path, query or user info)
    models: list[str]
    state: str  # its worst breaker: open > half-open > closed
    served: int  # answers it gave
    share: float  # of every answer this replica's upstreams gave
    retries: int


class FallbackCount(msgspec.Struct):
    source: str = msgspec.field(name="from")
    to: str
    count: int


class Upstreams(msgspec.Struct):
    upstreams: list[UpstreamHealth]
    fallbacks: list[FallbackCount]
    retries: int
    fallbacks_total: int


class Circuits(msgspec.Struct):
    upstream: str
    circuits: list[Circuit]


class ResetAnswer(msgspec.Struct):
    reset: list[str]
    states: dict[str, str]
    audited: bool


_AT = re.compile(r"at `\$\.([^`]+)`")
_FIELD = re.compile(r"(?:unknown|missing required) field `([^`]+)`")


def invalid(exc: msgspec.ValidationError | msgspec.DecodeError) -> Exception:
    """A 400 naming the parameter msgspec refused, by its path (`selectors[1].colour`)."""
    text = str(exc)
    at, field = _AT.search(text), _FIELD.search(text)
    parts = [m.group(1) for m in (at, field) if m is not None]
    return InvalidRequest(f"Invalid parameter: {text}", param=".".join(parts) or None)
