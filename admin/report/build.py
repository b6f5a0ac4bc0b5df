"""Builds the report from the ledger with the admin API's query runner (both dialects, every
query timed, the slowest EXPLAINed for index advice)."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from admin.queries import QueryRunner
from admin.report import sql
from admin.report.advice import dimension_advice, repeated_misses
from admin.report.model import BudgetNear, GroupSpend, PersonaRate, QueryTiming, Report
from proxy.budget.alerts import Period
from proxy.budget.limits import limit_for
from proxy.ledger.records import BudgetOverride
from proxy.settings import BudgetSettings

WINDOWS = {"24h": timedelta(hours=24), "7d": timedelta(days=7), "30d": timedelta(days=30)}
NEAR_SHARE = 0.8  # a budget at 80 % of its limit or more is "near"
_WINDOW = re.compile(r"^([1-9][0-9]{0,2})([hd])$")

Progress = Callable[[str], None]


def parse_window(text: str) -> timedelta:
    """`24h`, `7d`, `30d` (or any `<n>h` / `<n>d` up to 999); ValueError otherwise."""
    found = _WINDOW.match(text)
    if found is None:
        raise ValueError(f"window {text!r}: expected e.g. 24h, 7d or 30d")
    n = int(found.group(1))
    return timedelta(hours=n) if found.group(2) == "h" else timedelta(days=n)


def window_end(now: datetime) -> datetime:
    """The end of a window ending now: the top of the next hour, so the roll-ups' hour rows
    are either wholly inside a window or wholly outside it."""
    top = now.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    return top + timedelta(hours=1)


async def build_report(
    runner: QueryRunner,
    *,
    window: str,
    now: datetime,
    overrides: list[BudgetOverride],
    budgets: BudgetSettings,
    progress: Progress | None = None,
) -> Report:
    step = progress or (lambda _: None)
    span = parse_window(window)
    end = window_end(now)
    start, prev_start = end - span, end - 2 * span
    current = (runner.at(start), runner.at(end))
    previous = (runner.at(prev_start), runner.at(start))
    groups: dict[str, list[GroupSpend]] = {}
    for name, text in sql.SPEND.items():
        step(f"spend by {name}")
        now_rows = await runner.run(f"report.spend_{name}", text, current)
        prev_rows = await runner.run(f"report.spend_{name}", text, previous)
        groups[name] = _spend(now_rows, prev_rows)
    step("persona")
    persona_rows = await runner.run("report.persona", sql.PERSONA[runner.dialect], current)
    step("persona advice")
    dimensions = await dimension_advice(runner, current)
    step("repeated misses")
    misses = await repeated_misses(runner, current)
    step("budgets")
    near = await _budgets_near(runner, now.astimezone(UTC), overrides, budgets)
    step("index advice")
    slow = runner.slowest()
    advice = await runner.suggestions(slow)
    models = groups["model"]
    return Report(
        dialect=runner.dialect,
        window=window,
        start=_iso(start),
        end=_iso(end),
        prev_start=_iso(prev_start),
        total_cost=sum(g.cost for g in models),
        total_saved=sum(g.saved for g in models),
        prev_total_cost=sum(g.prev_cost for g in models),
        prev_total_saved=sum(g.prev_saved for g in models),
        by_model=models,
        by_tenant=groups["tenant"],
        by_endpoint=groups["endpoint"],
        persona=[_persona(row) for row in persona_rows],
        dimensions=dimensions,
        repeated_misses=misses,
        budgets_near=near,
        slowest=[QueryTiming(name=q.name, ms=round(q.ms, 3), rows=q.rows) for q in slow],
        advice=advice,
    )


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _spend(now_rows: list[tuple[Any, ...]], prev_rows: list[tuple[Any, ...]]) -> list[GroupSpend]:
    """Every key seen in either window, the costliest first."""
    now_by = {str(r[0]): r for r in now_rows}
    prev_by = {str(r[0]): r for r in prev_rows}
    out = []
    for key in sorted(now_by.keys() | prev_by.keys()):
        cur = now_by.get(key, (key, 0, 0, 0.0, 0.0))
        old = prev_by.get(key, (key, 0, 0, 0.0, 0.0))
        cost, saved = float(cur[3] or 0), float(cur[4] or 0)
        prev_cost, prev_saved = float(old[3] or 0), float(old[4] or 0)
        out.append(GroupSpend(
            key=key, requests=int(cur[1] or 0), hits=int(cur[2] or 0), cost=cost, saved=saved,
            prev_requests=int(old[1] or 0), prev_cost=prev_cost, prev_saved=prev_saved,
            cost_change=cost - prev_cost, saved_change=saved - prev_saved,
        ))  # fmt: skip
    out.sort(key=lambda g: (-g.cost, g.key))
    return out


def _persona(row: tuple[Any, ...]) -> PersonaRate:
    requests, hits = int(row[2]), int(row[3] or 0)
    return PersonaRate(
        dimension=str(row[0]), value=str(row[1]), requests=requests, hits=hits,
        hit_rate=hits / requests if requests else 0.0, saved=float(row[4] or 0),
    )  # fmt: skip


async def _budgets_near(
    runner: QueryRunner, now: datetime, overrides: list[BudgetOverride], cfg: BudgetSettings
) -> list[BudgetNear]:
    """Every tenant and user budget with a limit whose spend this UTC day or month (from the
    ledger's roll-ups) is at NEAR_SHARE of it or more, the nearest first."""
    rows = {(o.scope, o.subject): o for o in overrides}
    day = now.replace(hour=0, minute=0, second=0, microsecond=0)
    periods: dict[Period, datetime] = {"daily": day, "monthly": day.replace(day=1)}
    out: list[BudgetNear] = []
    for period, since in periods.items():
        tenants = await runner.run("report.budget_tenants", sql.TENANT_SPEND, (runner.at(since),))
        for tenant, spent in tenants:
            default = cfg.tenant_daily_usd if period == "daily" else cfg.tenant_monthly_usd
            limit = limit_for(rows.get(("tenant", str(tenant))), period, default)
            out += _near("tenant", str(tenant), str(tenant), period, limit, float(spent or 0))
        users = await runner.run("report.budget_users", sql.USER_SPEND, (runner.at(since),))
        for tenant, user, spent in users:
            default = cfg.user_daily_usd if period == "daily" else cfg.user_monthly_usd
            limit = limit_for(rows.get(("user", str(user))), period, default)
            out += _near("user", str(user), str(tenant), period, limit, float(spent or 0))
    out.sort(key=lambda b: (-b.share, b.scope, b.subject, b.period))
    return out


def _near(
    scope: str, subject: str, tenant: str, period: str, limit: float, spent: float
) -> list[BudgetNear]:
    if limit <= 0 or spent < NEAR_SHARE * limit:
        return []
    return [BudgetNear(scope=scope, subject=subject, tenant=tenant, period=period,
                       limit_usd=limit, spent_usd=spent, share=spent / limit)]  # fmt: skip
