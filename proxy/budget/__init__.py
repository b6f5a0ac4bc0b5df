"""Budgets: daily and monthly USD limits per tenant and per user, with alerts
(docs/design.md §5)."""

from proxy.budget.alerts import Alerter, BudgetAlert
from proxy.budget.book import BudgetBook
from proxy.budget.limits import Budget
from proxy.budget.spend import MemorySpend, RedisSpend, SpendStore, SpendUnavailable

__all__ = [
    "Alerter",
    "Budget",
    "BudgetAlert",
    "BudgetBook",
    "MemorySpend",
    "RedisSpend",
    "SpendStore",
    "SpendUnavailable",
]
