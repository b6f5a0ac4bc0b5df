"""Daily and monthly USD budgets per tenant and per user (docs/design.md §4, §5).

Periods are UTC days and calendar months. Limits are the configured defaults unless an
override (table `budget_overrides`, by tenant id or user id) says otherwise; 0 is unlimited.
User spend is counted per (tenant, user). `preflight` reserves the request's estimate against
every limited budget at once, or refuses it when it would cross what is left (spent plus what
other requests in flight hold); `settle` replaces the reservation by the real cost (0 when the
call failed) and fires alerts at the configured shares once per budget and period (a marker in
the spend store, so once across replicas). Settles the store does not take are retried
(proxy/budget/backlog.py); totals missing from the store are restored from the ledger
(proxy/budget/restore.py). When the store cannot be reached, `on_store_down` decides: `open`
serves the request unchecked, `closed` refuses it with 503; both are counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from proxy.budget.alerts import Alerter
from proxy.budget.backlog import SettleBacklog
from proxy.budget.crossings import Crossings
from proxy.budget.downgrades import DowngradeTables
from proxy.budget.limits import Budget, exceeded, hashed_part, key_part, limit_for, seconds
from proxy.budget.restore import LedgerRestore
from proxy.budget.spend import Check, MemorySpend, SpendStore, SpendUnavailable
from proxy.budget.spend_redis import RedisSpend
from proxy.failures import StoreUnavailable
from proxy.ledger.records import BudgetOverride
from proxy.settings import BudgetSettings, Settings
from proxy.vocabulary import BUDGET_KEY_PREFIX

if TYPE_CHECKING:
    from proxy.cache.cluster import RedisClient
    from proxy.ledger.sink import LedgerSink

log = logging.getLogger("sidecache.budget")
_DAY_TTL_S = 3 * 86400
_MONTH_TTL_S = 35 * 86400
_LOG_EVERY_S = 60.0
_CLOSED_RETRY_AFTER_S = 5


@dataclass(frozen=True, slots=True)
class Reservation:
    """What `preflight` held: `member` names the hold in the store (`<id>|<usd>`)."""

    tenant: str
    user_id: str | None
    member: str


@dataclass(frozen=True, slots=True)
class _Settle:
    tenant: str
    user_id: str | None
    budgets: list[Budget]
    cost_usd: float
    member: str
    once: str  # the store adds a settle once per id, however often it is retried


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
        self.downgrades = DowngradeTables(settings)  # the cheaper model over budget
        self.crossings = Crossings(settings.alert_thresholds, store, self.alerter, clock)
        self._refresh: asyncio.Task[None] | None = None
        self._logged_at = -_LOG_EVERY_S
        self.store_errors = 0
        self.store_up = True
        self.unchecked: Counter[str] = Counter()  # store down: "allowed" / "refused" requests
        self.restore = LedgerRestore(overrides)
        self.backlog: SettleBacklog[_Settle] = SettleBacklog(self._apply)

    @classmethod
    def from_settings(
        cls, settings: Settings, *, redis: RedisClient | None = None, sink: LedgerSink | None = None
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
        await self.backlog.close()
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
        self.downgrades.load(rows)
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

    async def preflight(
        self, tenant: str, user_id: str | None, estimated_usd: float
    ) -> Reservation | None:
        """Holds `estimated_usd` against every limited budget, atomically; raises
        BudgetExceeded when it would cross what is left of any (or one is used up already), and
        StoreUnavailable when the store is down and `on_store_down` is `closed`. Returns the
        hold for `settle` (None: nothing limited, or the store was down and the request goes on
        unchecked)."""
        limited = [b for b in self.budgets(tenant, user_id) if b.limit_usd > 0]
        if not limited:
            return None
        checks = [Check(b.key, b.limit_usd, b.ttl_s) for b in limited]
        member = f"{secrets.token_hex(8)}|{float(estimated_usd)!r}"
        hold_s = self.settings.reservation_hold_s
        try:
            verdict = await self.store.reserve(
                checks, estimated_usd, member, hold_s, self.restore.wanted
            )
            if verdict.unseeded:
                missing = [limited[i] for i in verdict.unseeded]
                await self.restore.restore(self.store, tenant, user_id, missing)
                verdict = await self.store.reserve(checks, estimated_usd, member, hold_s, False)
        except SpendUnavailable as exc:
            self._store_down(exc)
            return None
        self.store_up = True
        if verdict.refused is None:
            return Reservation(tenant, user_id, member)
        budget, spent = limited[verdict.refused], verdict.spent
        if self.crossings.refusal_alerts(budget, spent):
            try:
                await self.crossings.fire(budget, tenant, user_id, spent, [1.0], "refused")
            except SpendUnavailable as exc:
                self._complain("budget store unavailable; alert not sent", exc)
        raise exceeded(budget, spent + verdict.reserved, estimated_usd)

    def _store_down(self, exc: SpendUnavailable) -> None:
        self.store_up = False
        if self.settings.on_store_down == "closed":
            self.unchecked["refused"] += 1
            self._complain("budget store unavailable; request refused", exc)
            raise StoreUnavailable(
                "Budgets cannot be checked right now (the budget store is unavailable), and "
                "this sidecar refuses requests it cannot check.",
                code="budget_store_unavailable",
                retry_after_s=_CLOSED_RETRY_AFTER_S,
            ) from exc
        self.unchecked["allowed"] += 1
        self._complain("budget store unavailable; request allowed", exc)

    async def settle(
        self,
        tenant: str,
        user_id: str | None,
        cost_usd: float,
        reservation: Reservation | None = None,
    ) -> None:
        """Adds the real cost of a request to its budgets in place of its reservation (a
        failed call settles 0: the hold is released) and fires the alerts it crosses. When the
        store does not take it, the settle is queued and retried (never lost silently)."""
        member = reservation.member if reservation is not None else ""
        cost = cost_usd if cost_usd > 0 else 0.0
        if not cost and not member:
            return
        budgets = self.budgets(tenant, user_id)
        base = BUDGET_KEY_PREFIX % key_part(tenant)
        job = _Settle(tenant, user_id, budgets, cost, member, f"{base}:k:{secrets.token_hex(8)}")
        try:
            await self._apply(job)
        except SpendUnavailable as exc:
            self._complain("budget store unavailable; spend queued for retry", exc)
            self.backlog.add(job)

    async def _apply(self, job: _Settle) -> None:
        totals = await self.store.settle(
            [(b.key, b.ttl_s) for b in job.budgets], job.cost_usd, job.member, job.once
        )
        self.store_up = True
        if not job.cost_usd:
            return
        for budget, total in zip(job.budgets, totals, strict=True):
            crossed = self.crossings.crossed(budget, total)
            if crossed:
                try:
                    await self.crossings.fire(
                        budget, job.tenant, job.user_id, total, crossed, "spent"
                    )
                except SpendUnavailable as exc:  # the spend is counted; only the alert waits
                    self._complain("budget store unavailable; alert not sent", exc)

    def _complain(self, what: str, exc: BaseException) -> None:
        self.store_errors += 1
        self.store_up = False
        now = time.monotonic()
        if now - self._logged_at >= _LOG_EVERY_S:
            self._logged_at = now
            log.warning("%s (%s: %s)", what, type(exc).__name__, exc)
