"""What a budget is (scope, period, limit, where its spend is counted), and the 429 a request
gets when it would cross one."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import timedelta

from proxy.budget.alerts import Period, Scope
from proxy.failures import BudgetExceeded
from proxy.ledger.records import BudgetOverride

_SAFE = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")


@dataclass(frozen=True, slots=True)
class Budget:
    scope: Scope
    period: Period
    period_start: str  # 2026-11-24 or 2026-11 (UTC)
    limit_usd: float  # 0: unlimited (counted, never enforced)
    key: str  # where its spend is counted
    ttl_s: int
    resets_in_s: int


def key_part(value: str) -> str:
    """A key-safe form of an id: as is when plain, else a hash (never `:`, `{` or `}`)."""
    if _SAFE.match(value):
        return value
    return hashed_part(value)


def hashed_part(value: str) -> str:
    """A key part that reveals nothing of the id it stands for."""
    return "~" + hashlib.sha256(value.encode("utf-8", "replace")).hexdigest()[:32]


def limit_for(row: BudgetOverride | None, period: Period, default: float) -> float:
    """The override's limit for `period` when it sets one, else the configured default."""
    if row is not None:
        value = row.daily_usd if period == "daily" else row.monthly_usd
        if value is not None:
            return value
    return default


def seconds(delta: timedelta) -> int:
    return max(1, int(delta.total_seconds() + 0.999))


def exceeded(budget: Budget, spent: float, estimate: float) -> BudgetExceeded:
    """429 `budget_exceeded`, naming the budget and its period (never an id or a secret)."""
    who = "tenant" if budget.scope == "tenant" else "user"
    when = "today" if budget.period == "daily" else "this month"
    left = max(0.0, budget.limit_usd - spent)
    return BudgetExceeded(
        f"Budget exceeded: the {who}'s {budget.period} budget of {usd(budget.limit_usd, 2)} "
        f"({budget.period_start}, UTC) has {usd(left, 4)} left {when}; this request is "
        f"estimated at {usd(estimate, 4)}. It resets in {budget.resets_in_s} s.",
        retry_after_s=budget.resets_in_s,
    )


def usd(amount: float, places: int) -> str:
    """Dollars to `places` decimals, or to the first significant digits when that would show a
    non-zero amount as $0.00 (a $0.001 budget must not read "$0.00")."""
    text = f"${amount:.{places}f}"
    if amount <= 0 or amount >= 10**-places:
        return text
    return f"${amount:.{places + 6}f}".rstrip("0")
