"""Budget alerts: a structured log line, a count per (scope, threshold) for the metric, and a
POST to ALERT_WEBHOOK_URL. The POST is a background task with a short timeout, never on the
request path; its failures are logged and counted. The URL itself is never logged (webhook
URLs often carry a token)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from typing import Literal

import aiohttp
import msgspec

log = logging.getLogger("sidecache.budget")
Scope = Literal["tenant", "user"]
Period = Literal["daily", "monthly"]


class BudgetAlert(msgspec.Struct, kw_only=True):
    """The webhook's JSON body."""

    event: str = "sidecache.budget_threshold"
    scope: Scope
    tenant: str
    user_id: str | None
    period: Period
    period_start: str  # 2026-11-24 (daily) or 2026-11 (monthly), UTC
    threshold: float  # 0.5, 0.8, 1.0
    reason: str = "spent"  # or "refused": a request was refused at the limit
    spent_usd: float
    limit_usd: float
    at: str  # ISO 8601 UTC


_encode = msgspec.json.Encoder().encode


def threshold_label(threshold: float) -> str:
    return f"{round(threshold * 100):d}"


class Alerter:
    def __init__(self, webhook_url: str | None, *, timeout_s: float = 3.0) -> None:
        self._url = webhook_url
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.counts: Counter[tuple[str, str]] = Counter()  # (scope, threshold %) -> alerts
        self.webhook_failures = 0

    def fire(self, alert: BudgetAlert) -> None:
        label = threshold_label(alert.threshold)
        self.counts[(alert.scope, label)] += 1
        log.warning(
            "budget alert: scope=%s period=%s period_start=%s threshold=%s%% reason=%s "
            "spent_usd=%.6f limit_usd=%.6f tenant=%s user_id=%s",
            alert.scope,
            alert.period,
            alert.period_start,
            label,
            alert.reason,
            alert.spent_usd,
            alert.limit_usd,
            alert.tenant,
            alert.user_id,
        )
        if self._url:
            task = asyncio.create_task(self._post(self._url, alert), name="sidecache-alert")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _post(self, url: str, alert: BudgetAlert) -> None:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        try:
            async with self._session.post(
                url, data=_encode(alert), headers={"Content-Type": "application/json"}
            ) as response:
                await response.read()
                if response.status >= 400:
                    raise aiohttp.ClientResponseError(
                        response.request_info, (), status=response.status
                    )
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            self.webhook_failures += 1
            status = getattr(exc, "status", None)
            log.warning(
                "budget alert webhook failed (%s%s)",
                type(exc).__name__,
                f" {status}" if status else "",
            )

    async def drain(self, timeout_s: float = 5.0) -> None:
        """Waits for the webhook POSTs under way (tests, shutdown)."""
        pending = list(self._tasks)
        if pending:
            await asyncio.wait(pending, timeout=timeout_s)

    async def close(self) -> None:
        await self.drain()
        for task in list(self._tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._session is not None:
            await self._session.close()
            self._session = None
