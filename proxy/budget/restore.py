"""Restoring budget totals from the ledger (issue #19, item 5): Redis restarted empty, a new
Redis, or a process start on the memory store would otherwise begin every period at $0.

Each total carries a marker (`<key>:s`) once restored this period. A reserve that finds it
missing asks the ledger's hourly roll-up for the period's spend and raises the total to it
(`seed`: the larger of the two, never lower). The larger, not the sum: spend counted since the
restart may be in the ledger already, and adding would count it twice. What the ledger writer
has not flushed yet when the total is restored (at most its flush interval of spend) is lost,
never doubled. A ledger that cannot answer is not asked again for `cooldown_s`: the request
goes on with the total as it is."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime

from proxy.budget.limits import Budget
from proxy.budget.spend import SpendStore
from proxy.ledger.sink import AdminLedger, LedgerSink

log = logging.getLogger("sidecache.budget")

_SQL = {
    ("tenant", "sqlite"): "SELECT coalesce(sum(cost), 0) FROM ai_usage_tenant_hourly "
    "WHERE tenant = ? AND hour >= ?",
    ("user", "sqlite"): "SELECT coalesce(sum(cost), 0) FROM ai_usage_hourly "
    "WHERE tenant = ? AND hour >= ? AND user_id = ?",
    ("tenant", "postgres"): "SELECT coalesce(sum(cost), 0) FROM ai_usage_tenant_hourly "
    "WHERE tenant = $1 AND hour >= $2",
    ("user", "postgres"): "SELECT coalesce(sum(cost), 0) FROM ai_usage_hourly "
    "WHERE tenant = $1 AND hour >= $2 AND user_id = $3",
}


def period_start(budget: Budget) -> datetime:
    """00:00 UTC of the budget's day, or of the first of its month."""
    day = budget.period_start if budget.period == "daily" else budget.period_start + "-01"
    return datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=UTC)


class LedgerRestore:
    def __init__(self, source: LedgerSink | None, *, cooldown_s: float = 30.0) -> None:
        self._ledger = source if isinstance(source, AdminLedger) else None
        self._cooldown_s = cooldown_s
        self._quiet_until = 0.0
        self.restored = 0  # totals restored (the metric)
        self.failures = 0

    @property
    def wanted(self) -> bool:
        """Whether reserves should ask for missing markers: there is a ledger to ask, and it
        has not just failed."""
        return self._ledger is not None and time.monotonic() >= self._quiet_until

    async def restore(
        self, store: SpendStore, tenant: str, user_id: str | None, budgets: list[Budget]
    ) -> None:
        """Seeds each budget's total from the ledger; raises SpendUnavailable (the store)."""
        ledger = self._ledger
        if ledger is None:
            return
        for budget in budgets:
            params: list[object] = [tenant, ledger.timestamp_param(period_start(budget))]
            if budget.scope == "user":
                params.append(user_id or "")
            try:
                rows = await ledger.fetch(_SQL[(budget.scope, ledger.name)], params)
            except Exception as exc:  # any database failure: go on unrestored, retry later
                self.failures += 1
                self._quiet_until = time.monotonic() + self._cooldown_s
                log.warning("cannot restore budget totals from the ledger (%s)", type(exc).__name__)
                return
            total = float(rows[0][0]) if rows else 0.0
            await store.seed(budget.key, budget.ttl_s, total)
            self.restored += 1
