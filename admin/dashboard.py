"""The dashboard's read endpoints (docs/design.md §6): overview, costs, performance, users and
cache, answered from the hourly roll-up with the queries of one call run concurrently, in the same
shape on PostgreSQL and SQLite."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from itertools import pairwise
from typing import Any

from aiohttp import web

from admin import sql
from admin.models import (
    GROUP_COLUMNS,
    WINDOWS,
    BudgetState,
    CacheStats,
    CostPoint,
    Costs,
    CostsParams,
    ErrorRow,
    HitRate,
    IndexSuggestion,
    Latency,
    LatencyRow,
    Overview,
    Performance,
    PerformanceParams,
    PersonaHitRate,
    SemanticStats,
    SimilarityBucket,
    TimedQuery,
    UserRow,
    Users,
    UsersParams,
    WindowParams,
)
from admin.queries import QueryRunner
from admin.wire import json_answer, params
from proxy.budget import SpendUnavailable
from proxy.runtime import Runtime

Rows = list[tuple[Any, ...]]


def rate(hits: float, requests: float) -> float:
    return round(float(hits) / float(requests), 6) if requests else 0.0


class Dashboard:
    def __init__(self, runtime: Runtime, runner: QueryRunner) -> None:
        self.runtime = runtime
        self.q = runner

    def since_hour(self, window: str) -> Any:
        start = datetime.now(UTC) - WINDOWS[window]
        return self.q.at(start.replace(minute=0, second=0, microsecond=0))

    def since(self, window: str) -> Any:
        return self.q.at(datetime.now(UTC) - WINDOWS[window])

    async def overview(self, request: web.Request) -> web.Response:
        p = params(request, WindowParams)
        since = self.since_hour(p.window)
        totals, groups = await asyncio.gather(
            self.q.run("overview.totals", sql.TOTALS, [since]),
            self.q.run("overview.group_latency", sql.GROUP_LATENCY, [since]),
        )
        req, hits, errors, cost, saved, ms_sum, prompt, completion, cached, written, reasoning = (
            totals[0]
        )
        prices = self.runtime.prices
        return json_answer(Overview(
            window=p.window, requests=int(req), hits=int(hits), hit_rate=rate(hits, req),
            errors=int(errors), cost_usd=float(cost), saved_usd=float(saved),
            prompt_tokens=int(prompt), completion_tokens=int(completion),
            cached_tokens=int(cached), cache_write_tokens=int(written),
            reasoning_tokens=int(reasoning),
            latency=Latency(avg_ms=round(float(ms_sum) / int(req), 3) if req else 0.0,
                            p95_ms_approx=_weighted_p95(groups)),
            unpriced_models=sorted(prices.unpriced_models),
            unpriced_requests=prices.unpriced_requests,
            ledger=self.runtime.ledger.stats,
        ))  # fmt: skip

    async def costs(self, request: web.Request) -> web.Response:
        p = params(request, CostsParams)
        text = sql.costs(self.q.dialect, p.bucket, GROUP_COLUMNS[p.group_by])
        rows = await self.q.run(f"costs.{p.bucket}.{p.group_by}", text, [self.since_hour(p.window)])
        series = [
            CostPoint(bucket=str(b), group=str(g), requests=int(n), cost_usd=float(c),
                      saved_usd=float(s), prompt_tokens=int(p), completion_tokens=int(o),
                      cached_tokens=int(ca), cache_write_tokens=int(w), reasoning_tokens=int(r))
            for b, g, n, c, s, p, o, ca, w, r in rows
        ]  # fmt: skip
        return json_answer(Costs(
            window=p.window, bucket=p.bucket, group_by=p.group_by, series=series,
            total_cost_usd=sum(x.cost_usd for x in series),
            total_saved_usd=sum(x.saved_usd for x in series),
        ))  # fmt: skip

    async def performance(self, request: web.Request) -> web.Response:
        p = params(request, PerformanceParams)
        since = self.since(p.window)
        latency, errors = await asyncio.gather(
            self.q.run("performance.latency", sql.LATENCY, [since]),
            self.q.run("performance.upstream_errors", sql.ERRORS, [since]),
        )
        slowest = self.q.slowest()
        suggestions = await self.q.suggestions(slowest)
        return json_answer(Performance(
            window=p.window,
            latency=[
                LatencyRow(endpoint=e, cache_status=s, requests=int(n), avg_ms=_ms(avg),
                           p50_ms=_ms(p50), p95_ms=_ms(p95), p99_ms=_ms(p99), max_ms=_ms(top))
                for e, s, n, avg, p50, p95, p99, top in latency
            ],
            upstream_errors=[ErrorRow(endpoint=e, status=int(s), count=int(n))
                             for e, s, n in errors],
            slow_queries=[TimedQuery(name=x.name, ms=round(x.ms, 3), rows=x.rows)
                          for x in slowest],
            suggestions=[IndexSuggestion(query=s.query, kind=s.kind, reason=s.reason, sql=s.sql)
                         for s in suggestions],
        ))  # fmt: skip

    async def users(self, request: web.Request) -> web.Response:
        p = params(request, UsersParams)
        since = self.since_hour(p.window)
        by_cost, by_requests = await asyncio.gather(
            self.q.run("users.by_cost", sql.USERS_BY_COST, [since, p.limit]),
            self.q.run("users.by_requests", sql.USERS_BY_REQUESTS, [since, p.limit]),
        )
        people = {(str(r[0]), str(r[1])) for r in by_cost + by_requests}
        found = await asyncio.gather(*(self._budgets(t, u) for t, u in people))
        budgets = dict(zip(people, found, strict=True))
        return json_answer(Users(
            window=p.window,
            by_cost=[_user(r, budgets) for r in by_cost],
            by_requests=[_user(r, budgets) for r in by_requests],
        ))  # fmt: skip

    async def _budgets(self, tenant: str, user_id: str) -> list[BudgetState] | None:
        try:
            spent = await self.runtime.budgets.spent(tenant, user_id)
        except (SpendUnavailable, OSError, TimeoutError):
            return None
        return [BudgetState(scope=b.scope, period=b.period, limit_usd=b.limit_usd,
                            spent_usd=round(s, 9)) for b, s in spent]  # fmt: skip

    async def cache(self, request: web.Request) -> web.Response:
        p = params(request, WindowParams)
        hour, since = self.since_hour(p.window), self.since(p.window)
        endpoints, models, personas, semantic = await asyncio.gather(
            self.q.run("cache.by_endpoint", sql.HITS_BY_ENDPOINT, [hour]),
            self.q.run("cache.by_model", sql.HITS_BY_MODEL, [hour]),
            self.q.run("cache.by_persona", sql.PERSONA[self.q.dialect], [since]),
            # From the top of the hour, as the roll-up: exact = the roll-up's hits - these.
            self.q.run("cache.semantic", sql.SEMANTIC, [hour]),
        )
        store = self.runtime.store
        entries, size = store.usage()
        by_endpoint = [_hit_rate(r) for r in endpoints]
        saved = sum(x.saved_usd for x in by_endpoint)
        hits = sum(x.hits for x in by_endpoint)
        return json_answer(CacheStats(
            window=p.window, backend=store.backend,
            entries=entries if entries >= 0 else None, bytes=size if size >= 0 else None,
            by_endpoint=by_endpoint, by_model=[_hit_rate(r) for r in models],
            by_persona=[PersonaHitRate(dimension=str(k), value=str(v), requests=int(n),
                                       hits=int(h), hit_rate=rate(h, n))
                        for k, v, n, h in personas],
            saved_usd=saved,
            semantic=self._semantic(semantic[0], hits, saved),
        ))  # fmt: skip

    def _semantic(self, row: tuple[Any, ...], hits: int, saved: float) -> SemanticStats:
        n, semantic_saved, *counts = row
        bounds = sql.SIMILARITY_BOUNDS
        return SemanticStats(
            enabled=self.runtime.semantic is not None,
            hits=int(n), saved_usd=float(semantic_saved),
            exact_hits=max(0, hits - int(n)),
            exact_saved_usd=max(0.0, saved - float(semantic_saved)),
            similarity=[SimilarityBucket(lower=low, upper=high, hits=int(c or 0))
                        for (low, high), c in zip(pairwise(bounds), counts, strict=True)],
        )  # fmt: skip


def _ms(value: Any) -> float:
    return round(float(value), 3) if value is not None else 0.0


def _hit_rate(row: tuple[Any, ...]) -> HitRate:
    key, n, h, saved = row
    return HitRate(key=str(key), requests=int(n), hits=int(h), hit_rate=rate(h, n),
                   saved_usd=float(saved))  # fmt: skip


def _user(
    row: tuple[Any, ...], budgets: dict[tuple[str, str], list[BudgetState] | None]
) -> UserRow:
    tenant, user_id, n, h, cost, saved = row
    return UserRow(tenant=str(tenant), user_id=str(user_id), requests=int(n), hits=int(h),
                   hit_rate=rate(h, n), cost_usd=float(cost), saved_usd=float(saved),
                   budgets=budgets.get((str(tenant), str(user_id))))  # fmt: skip


def _weighted_p95(groups: Rows) -> float:
    """The 95th percentile of per-group hourly average latencies, each weighted by its
    requests: the best the roll-up (sums, not distributions) can tell."""
    total = sum(int(n) for _, n in groups)
    if not total:
        return 0.0
    seen = 0
    for avg, n in sorted((float(a), int(n)) for a, n in groups):
        seen += n
        if seen >= 0.95 * total:
            return round(avg, 3)
    return 0.0
