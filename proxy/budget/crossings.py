"""Which alert thresholds a budget's spend crosses, and firing each one once per budget and
period, across replicas (a marker in the spend store) (docs/design.md §5)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from proxy.budget.alerts import Alerter, BudgetAlert, threshold_label
from proxy.budget.limits import Budget
from proxy.budget.spend import SpendStore

_MARKS_MAX = 10_000


class Crossings:
    def __init__(
        self,
        thresholds: Sequence[float],
        store: SpendStore,
        alerter: Alerter,
        clock: Callable[[], datetime],
    ) -> None:
        self._thresholds = sorted(set(thresholds))
        # A refusal counts as reaching 100 % once spend has passed the threshold below it, so
        # one oversized request at 10 % spent does not raise a 100 % alert.
        self._refusal_floor = max((t for t in self._thresholds if t < 1.0), default=0.0)
        self._store = store
        self._alerter = alerter
        self._clock = clock
        self._marked: set[str] = set()  # markers known to be set: saves a round trip

    def crossed(self, budget: Budget, total: float) -> list[float]:
        """The thresholds a limited budget's `total` spend has reached."""
        if budget.limit_usd <= 0:
            return []
        return [t for t in self._thresholds if total >= t * budget.limit_usd]

    def refusal_alerts(self, budget: Budget, spent: float) -> bool:
        """Whether a refusal at `spent` means the budget is used up for this period's requests:
        the 100 % alert fires then if spending has not fired it already (estimates err high,
        so spend alone may stop short of 100 %)."""
        return 1.0 in self._thresholds and spent >= self._refusal_floor * budget.limit_usd

    async def fire(
        self,
        budget: Budget,
        tenant: str,
        user_id: str | None,
        total: float,
        thresholds: list[float],
        reason: str,
    ) -> None:
        """Each threshold's alert, unless it fired already this period (raises
        SpendUnavailable when the store cannot say)."""
        for threshold in thresholds:
            marker = f"{budget.key}:a:{threshold_label(threshold)}"
            if marker in self._marked:
                continue
            first = await self._store.mark_once(marker, budget.ttl_s)
            if len(self._marked) >= _MARKS_MAX:
                self._marked.clear()
            self._marked.add(marker)
            if not first:
                continue
            self._alerter.fire(
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
