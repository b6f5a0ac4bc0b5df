"""Daily and monthly USD budgets per tenant and per user (docs/design.md §4, §5).

Periods are UTC days and calendar months. Limits are the configured defaults unless an
override (table `budget_overrides`, by tenant id or user id) says otherwise; 0 is unlimited.
User spend is counted per (tenant, user). `preflight` refuses a request whose estimate would
cross what is left of any limit; `settle` adds the real cost and fires alerts at the configured
shares once per budget and period (a marker in the spend store, so once across replicas).
When the spend store fails, requests are served (fail open) and the failure is counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from proxy.budget.alerts import Alerter, BudgetAlert, threshold_label
from proxy.budget.limits import Budget, exceeded, hashed_part, key_part, limit_for, seconds
from proxy.budget.spend import MemorySpend, RedisSpend, SpendStore, SpendUnavailable
from proxy.ledger.records import BudgetOverride
from proxy.settings import BudgetSettings, Settings
from proxy.vocabulary import BUDGET_KEY_PREFIX

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from proxy.ledger.sink import LedgerSink

log = logging.getLogger("sidecache.budget")
_DAY_TTL_S = 3 * 86400
_MONTH_TTL_S = 35 * 86400
_LOG_EVERY_S = 60.0
_MARKS_MAX = 10_000


class BudgetBook:
    def __init__(
        self,
        settings: BudgetSettings,
        store: SpendStore,
        *,
        alerter: Alerter | None = None,
        overrides: LedgerSink | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.settings = settings
        self.store = store
        self.alerter = alerter or Alerter(None)
        self._source = overrides
        self._clock = clock
        self._overrides: dict[tuple[str, str], BudgetOverride] = {}
        self._thresholds = sorted(set(settings.alert_thresholds))
        # A refusal counts as reaching 100 % once spend has passed the threshold below it, so
        # one oversized request at 10 % spent does not raise a 100 % alert.
        self._refusal_floor = max((t for t in self._thresholds if t < 1.0), default=0.0)
        self._marked: set[str] = set()  # markers known to be set: saves a round trip
        self._refresh: asyncio.Task[None] | None = None
        self._logged_at = -_LOG_EVERY_S
        self.store_errors = 0

    @classmethod
    def from_settings(
        cls, settings: Settings, *, redis: Redis | None = None, sink: LedgerSink | None = None
    ) -> BudgetBook:
        """Redis spend when a client is given (the runtime's), else memory."""
        store: SpendStore = (
            RedisSpend(redis, timeout_ms=settings.cache.redis_timeout_ms)
            if redis is not None
            else MemorySpend()
        )
        alerter = Alerter(
            settings.ledger.alert_webhook_url, timeout_s=settings.budget.webhook_timeout_s
        )
        return cls(settings.budget, store, alerter=alerter, overrides=sink)

    async def start(self) -> None:
        """Loads the overrides and keeps re-reading them: they are changed in the database."""
        await self.refresh_overrides()
        if self._source is not None and self._refresh is None:
            self._refresh = asyncio.create_task(self._refresh_loop(), name="sidecache-budgets")

    async def close(self) -> None:
        if self._refresh is not None:
            self._refresh.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresh
            self._refresh = None
        await self.alerter.close()

    async def refresh_overrides(self) -> bool:
        if self._source is None:
            return True
        try:
            rows = await self._source.fetch_overrides()
        except Exception as exc:
            log.warning("cannot read budget overrides (%s: %s)", type(exc).__name__, exc)
            return False
        self._overrides = {(row.scope, row.subject): row for row in rows}
        return True

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.overrides_refresh_s)
            await self.refresh_overrides()

    @property
    def overrides(self) -> list[BudgetOverride]:
        return list(self._overrides.values())

    def budgets(self, tenant: str, user_id: str | None) -> list[Budget]:
        """Every budget a request of (tenant, user_id) counts against, limited or not."""
        now = self._clock().astimezone(UTC)
        day, month = now.strftime("%Y-%m-%d"), now.strftime("%Y-%m")
        next_day = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
        next_month = (now.replace(day=28) + timedelta(days=4)).replace(
            day=1, hour=0, minute=0, second=0, microsecond=0
        )
        to_day, to_month = seconds(next_day - now), seconds(next_month - now)
        base = BUDGET_KEY_PREFIX % key_part(tenant)
        cfg = self.settings
        tenant_row = self._overrides.get(("tenant", tenant))
        out = [
            Budget("tenant", "daily", day, limit_for(tenant_row, "daily", cfg.tenant_daily_usd),
                   f"{base}:t:d:{day}", _DAY_TTL_S, to_day),
            Budget("tenant", "monthly", month,
                   limit_for(tenant_row, "monthly", cfg.tenant_monthly_usd),
                   f"{base}:t:m:{month}", _MONTH_TTL_S, to_month),
        ]  # fmt: skip
        if user_id:
            user_row = self._overrides.get(("user", user_id))
            ukey = f"{base}:u:{hashed_part(user_id)}"  # user ids never appear in Redis keys
            out += [
                Budget("user", "daily", day, limit_for(user_row, "daily", cfg.user_daily_usd),
                       f"{ukey}:d:{day}", _DAY_TTL_S, to_day),
                Budget("user", "monthly", month,
                       limit_for(user_row, "monthly", cfg.user_monthly_usd),
                       f"{ukey}:m:{month}", _MONTH_TTL_S, to_month),
            ]  # fmt: skip
        return out

    async def spent(self, tenant: str, user_id: str | None) -> list[tuple[Budget, float]]:
        """(budget, USD spent this period) for the admin API; raises SpendUnavailable."""
        budgets = self.budgets(tenant, user_id)
        totals = await self.store.get([b.key for b in budgets])
        return list(zip(budgets, totals, strict=True))

    async def preflight(self, tenant: str, user_id: str | None, estimated_usd: float) -> None:
        """Raises BudgetExceeded when `estimated_usd` would cross what is left
        of any limited budget (or one is used up already)."""
        limited = [b for b in self.budgets(tenant, user_id) if b.limit_usd > 0]
        if not limited:
            return
        try:
            totals = await self.store.get([b.key for b in limited])
        except SpendUnavailable as exc:
            self._complain("budget store unavailable; request allowed", exc)
            return
        for budget, spent in zip(limited, totals, strict=True):
            if spent >= budget.limit_usd or spent + estimated_usd > budget.limit_usd:
                if 1.0 in self._thresholds and spent >= self._refusal_floor * budget.limit_usd:
                    await self._refused(budget, tenant, user_id, spent)
                raise exceeded(budget, spent, estimated_usd)

    async def settle(self, tenant: str, user_id: str | None, cost_usd: float) -> None:
        """Adds the real cost of a request to its budgets and fires the alerts it crosses."""
        if not cost_usd > 0:
            return
        budgets = self.budgets(tenant, user_id)
        try:
            totals = await self.store.add([(b.key, b.ttl_s) for b in budgets], cost_usd)
            for budget, total in zip(budgets, totals, strict=True):
                crossed = [t for t in self._thresholds if total >= t * budget.limit_usd]
                if budget.limit_usd > 0 and crossed:
                    await self._alert(budget, tenant, user_id, total, crossed, "spent")
        except SpendUnavailable as exc:
            self._complain("budget store unavailable; spend not counted", exc)

    async def _refused(
        self, budget: Budget, tenant: str, user_id: str | None, spent: float
    ) -> None:
        """A refusal near the limit means the budget is used up for this period's requests: the
        100 % alert fires then if spending has not fired it already (estimates err high, so
        spend alone may stop short of 100 %)."""
        try:
            await self._alert(budget, tenant, user_id, spent, [1.0], "refused")
        except SpendUnavailable as exc:
            self._complain("budget store unavailable; alert not sent", exc)

    async def _alert(
        self,
        budget: Budget,
        tenant: str,
        user_id: str | None,
        total: float,
        thresholds: list[float],
        reason: str,
    ) -> None:
        for threshold in thresholds:
            marker = f"{budget.key}:a:{threshold_label(threshold)}"
            if marker in self._marked:
                continue
            first = await self.store.mark_once(marker, budget.ttl_s)
            if len(self._marked) >= _MARKS_MAX:
                self._marked.clear()
            self._marked.add(marker)
            if not first:
                continue
            self.alerter.fire(
                BudgetAlert(
                    scope=budget.scope,
                    tenant=tenant,
                    user_id=user_id if budget.scope == "user" else None,
                    period=budget.period,
                    period_start=budget.period_start,
                    threshold=threshold,
                    reason=reason,
                    spent_usd=total,
                    limit_usd=budget.limit_usd,
                    at=self._clock().astimezone(UTC).isoformat(timespec="seconds"),
                )
            )

    def _complain(self, what: str, exc: BaseException) -> None:
        self.store_errors += 1
        now = time.monotonic()
        if now - self._logged_at >= _LOG_EVERY_S:
            self._logged_at = now
            log.warning("%s (%s: %s)", what, type(exc).__name__, exc)
