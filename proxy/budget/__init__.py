"""Budgets: daily and monthly USD limits per tenant and per user, with alerts
(docs/design.md §5)."""

from proxy.budget.alerts import Alerter, BudgetAlert
from proxy.budget.book import BudgetBook, Reservation
from proxy.budget.limits import Budget
from proxy.budget.spend import MemorySpend, SpendStore, SpendUnavailable
from proxy.budget.spend_redis import RedisSpend

__all__ = [
    "Alerter",
    "Budget",
    "BudgetAlert",
    "BudgetBook",
    "MemorySpend",
    "RedisSpend",
    "Reservation",
    "SpendStore",
    "SpendUnavailable",
]
