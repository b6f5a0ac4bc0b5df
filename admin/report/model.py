"""The report's wire shape: what `sidecache report` renders and the admin API returns."""

from __future__ import annotations

import msgspec

from admin.queries import Suggestion


class GroupSpend(msgspec.Struct, kw_only=True):
    """One model, tenant or endpoint: this window's figures and the window before's."""

    key: str
    requests: int
    hits: int
    cost: float
    saved: float
    prev_requests: int
    prev_cost: float
    prev_saved: float
    cost_change: float  # cost - prev_cost
    saved_change: float


class PersonaRate(msgspec.Struct, kw_only=True):
    dimension: str
    value: str
    requests: int
    hits: int
    hit_rate: float
    saved: float


class DimensionAdvice(msgspec.Struct, kw_only=True):
    """A persona dimension: in how many requests asked with two or more of its values it was
    compared, in how many the answer differed, and (when never) what dropping it would have
    saved: the misses a stored answer for another of its values would have served."""

    dimension: str
    requests_compared: int
    changed_answer: int
    never_changed: bool
    saving_usd: float


class RepeatedMiss(msgspec.Struct, kw_only=True):
    request_digest: str
    model: str
    endpoint: str
    misses: int
    cost: float


class BudgetNear(msgspec.Struct, kw_only=True):
    scope: str  # tenant or user
    subject: str
    tenant: str
    period: str  # daily or monthly
    limit_usd: float
    spent_usd: float
    share: float  # spent / limit


class QueryTiming(msgspec.Struct, kw_only=True):
    name: str
    ms: float
    rows: int


class Report(msgspec.Struct, kw_only=True):
    dialect: str
    window: str
    start: str  # ISO, UTC; the window is [start, end)
    end: str
    prev_start: str
    total_cost: float
    total_saved: float
    prev_total_cost: float
    prev_total_saved: float
    by_model: list[GroupSpend]
    by_tenant: list[GroupSpend]
    by_endpoint: list[GroupSpend]
    persona: list[PersonaRate]
    dimensions: list[DimensionAdvice]
    repeated_misses: list[RepeatedMiss]
    budgets_near: list[BudgetNear]
    slowest: list[QueryTiming]
    advice: list[Suggestion]
