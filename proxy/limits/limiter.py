"""Sliding-log rate limits: a request's check, asked of the counter or decided from this
replica's lease (docs/design.md §13). Which limits apply is proxy/limits/scopes.py, reading the
counter's answer proxy/limits/decision.py. The logs live in a counter: Redis
(proxy/limits/redis_backend.py) or this process's memory without it (proxy/limits/memory.py).

A sliding log keeps every counted request (and its tokens) for one window, so in ANY window's
span no more than the limit is ever let through: no burst of twice the limit at a window's
edge (as fixed windows allow), and no approximation (as two weighted windows are). What it costs
is memory of one entry per counted request, which the limit itself bounds.

The counter is sent the request's check when `check` is called, not when its answer is
awaited: on the hit path the check goes to Redis in the same write as the cache GET (or is
decided from this replica's lease, proxy/limits/lease.py, without Redis at all).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import secrets
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol

from proxy.failures import RateLimited
from proxy.limits.decision import decision, refused_limit
from proxy.limits.lease import LEASE_S, Lease, Limits
from proxy.limits.scopes import LimitOverride, limited_scopes
from proxy.limits.types import Counted, Decision, Scope
from proxy.settings import RateSettings

# (tenant, user) pairs whose scopes are kept: past it the table starts again.
_SCOPES_KEPT = 10_000
_SEEN_KEPT = 1_000
_WAIT_FOR_ASK_S = 1.0


class CounterDown(Exception):
    """The shared counter (Redis) cannot answer: the request goes on unlimited."""


class Counter(Protocol):
    backend: str

    def take(
        self,
        scopes: Sequence[Scope],
        member: str,
        requests: int,
        tokens: int,
        window_ms: int,
        lease_ms: int = 0,
    ) -> Awaitable[Counted]:
        """Checks and (when every limit allows it) counts; sent before this returns. `requests`
        above one is a lease's batch: as many as fit are granted (the last item of the
        answer), each counted as if used at the lease's end (`lease_ms` from now)."""

    async def correct(
        self, scopes: Sequence[Scope], member: str, tokens: int, window_ms: int
    ) -> None:
        """Replaces `member`'s counted tokens (the estimate) by `tokens` (the real usage)."""


@dataclass
class Limiter:
    settings: RateSettings
    counter: Counter
    on_unenforced: Callable[[], None] = lambda: None
    on_limited: Callable[[str, str], None] = lambda scope, kind: None
    overrides: dict[tuple[str, str], LimitOverride] = field(default_factory=dict)
    _ids: Callable[[], int] = field(default_factory=lambda: itertools.count().__next__)
    _prefix: str = field(default_factory=lambda: secrets.token_hex(4))
    # Whether any limit may apply to any request: off, a request does no rate work at all.
    active: bool = False
    # Requests taken a few at a time (proxy/limits/lease.py): with a shared counter only.
    leasing: bool = field(default=False, init=False)
    lease_clock: Callable[[], float] = time.monotonic
    _limits: dict[tuple[str, str | None], Limits | None] = field(default_factory=dict)
    seen: dict[str, None] = field(default_factory=dict)  # tenants this process counted
    _asks: set[asyncio.Future[None]] = field(default_factory=set)  # asks ahead, in flight

    def __post_init__(self) -> None:
        self.active = self.settings.any or bool(self.overrides)
        self.leasing = self.counter.backend == "redis"

    def set_overrides(self, rows: Sequence[LimitOverride]) -> None:
        """The operator's overrides, from the admin API or a periodic re-read: the scopes kept
        (and their leases) are dropped only when the overrides changed. A lease dropped loses
        its unused slots (counted all the same) and its scope asks again from one request."""
        overrides = {(row.scope, row.id): row for row in rows}
        if overrides == self.overrides:
            return
        self.overrides = overrides
        self._limits = {}
        self.active = self.settings.any or bool(self.overrides)

    @property
    def window_ms(self) -> int:
        return int(self.settings.window_s * 1000)

    def limits(self, tenant: str, user_id: str | None) -> Limits | None:
        """The scopes with some limit and their lease (None: no limit applies, the request is
        not counted at all); kept per (tenant, user) until the overrides change."""
        try:
            return self._limits[tenant, user_id]
        except KeyError:
            pass
        if len(self._limits) >= _SCOPES_KEPT:
            self._limits.clear()
        scopes = self._make_scopes(tenant, user_id)
        lease = Lease(self.lease_clock, partial(self._ask_ahead, scopes)) if self.leasing else None
        known = self._limits[tenant, user_id] = Limits(scopes, lease) if scopes else None
        return known

    def scopes(self, tenant: str, user_id: str | None) -> tuple[Scope, ...]:
        limits = self.limits(tenant, user_id)
        return () if limits is None else limits.scopes

    def _make_scopes(self, tenant: str, user_id: str | None) -> tuple[Scope, ...]:
        self.seen[tenant] = None  # for the admin's view of current use (newest last)
        if len(self.seen) > _SEEN_KEPT:
            del self.seen[next(iter(self.seen))]
        return limited_scopes(self.settings, self.overrides, tenant, user_id)

    def member(self) -> str:
        return f"{self._prefix}.{self._ids()}"

    def check_request(
        self, tenant: str, user_id: str | None
    ) -> Decision | Coroutine[Any, Any, Decision | None] | None:
        """One request (a hit's check) of `tenant`'s `user_id`; None when no limit applies.
        Decided at once from this replica's lease when it holds one (proxy/limits/lease.py: a
        Decision returned, never a refusal); else after the lease being asked for, when one is
        in flight; else asked of the counter, sent before this returns."""
        try:
            limits = self._limits[tenant, user_id]
        except KeyError:
            limits = self.limits(tenant, user_id)
        if limits is None:
            return None
        lease = limits.lease
        if lease is None:
            return self.check(limits.scopes, self.member(), requests=1, tokens=0)
        held = lease.use()
        if held is not None:
            return held  # decided here: nothing to await
        if lease.asking is not None:
            return self._after(limits.scopes, lease, lease.asking)
        batch, asked_at = lease.sizing()
        lease_ms = int(LEASE_S * 1000) if batch > 1 else 0
        try:
            sent = self.counter.take(
                limits.scopes, self.member(), batch, 0, self.window_ms, lease_ms
            )
        except CounterDown:
            return self._decide(limits.scopes, None, 1, 0)
        return self._leased(limits.scopes, lease, sent, asked_at, lease.ask())

    async def _leased(
        self,
        scopes: tuple[Scope, ...],
        lease: Lease,
        sent: Awaitable[Counted],
        asked_at: float,
        asked: asyncio.Future[None],
    ) -> Decision | None:
        try:
            counted = await sent
        except CounterDown:
            self.on_unenforced()
            return None
        finally:
            lease.answered(asked)
        return lease.granted(decision(scopes, counted), counted[-1], asked_at)

    def _ask_ahead(self, scopes: tuple[Scope, ...], lease: Lease) -> None:
        """Asks for the next lease while the current one still serves (proxy/limits/lease.py);
        its answer is kept by a task of its own, one per batch."""
        batch, asked_at = lease.sizing()
        lease_ms = int(LEASE_S * 1000)
        try:
            sent = self.counter.take(scopes, self.member(), batch, 0, self.window_ms, lease_ms)
        except CounterDown:
            return  # the request that finds the lease used up asks, and finds out
        task = asyncio.ensure_future(self._ahead(scopes, sent, lease, asked_at, lease.ask()))
        self._asks.add(task)
        task.add_done_callback(self._asks.discard)

    async def _ahead(
        self,
        scopes: tuple[Scope, ...],
        sent: Awaitable[Counted],
        lease: Lease,
        asked_at: float,
        asked: asyncio.Future[None],
    ) -> None:
        try:
            counted = await sent
            lease.granted_ahead(decision(scopes, counted), counted[-1], asked_at)
        except CounterDown:
            pass  # no lease ahead: the request that finds the lease used up asks itself
        finally:
            lease.answered(asked)

    async def _after(
        self, scopes: tuple[Scope, ...], lease: Lease, asking: asyncio.Future[None]
    ) -> Decision | None:
        """A request that came while its lease was being asked for: from the new lease, else
        asked for alone (the batch was too small for every request that waited)."""
        # Bounded: should the asking request never await its ask, waiters ask for themselves.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_WAIT_FOR_ASK_S):
                await asyncio.shield(asking)
        held = lease.use()
        if held is not None:
            return held
        lease.missed += 1  # sizes its next ask
        return await self.check(scopes, self.member(), requests=1, tokens=0)

    def check(
        self, scopes: Sequence[Scope], member: str, *, requests: int, tokens: int
    ) -> Coroutine[Any, Any, Decision | None]:
        """Sends the check now; awaiting the result gives the decision (None: not enforced,
        the counter is down)."""
        try:
            sent = self.counter.take(scopes, member, requests, tokens, self.window_ms)
        except CounterDown:
            sent = None
        return self._decide(scopes, sent, requests, tokens)

    async def _decide(
        self,
        scopes: Sequence[Scope],
        sent: Awaitable[Counted] | None,
        requests: int,
        tokens: int,
    ) -> Decision | None:
        try:
            if sent is None:
                raise CounterDown("not sent")
            counted = await sent
        except CounterDown:
            self.on_unenforced()
            return None
        return decision(scopes, counted)

    async def usage(self, tenant: str) -> Decision | None:
        """A tenant's current use of its own limits, counting nothing (None: no limit applies,
        or the counter is down)."""
        scopes = tuple(s for s in self.scopes(tenant, None) if s.name == "tenant")
        if not scopes:
            return None
        return await self.check(scopes, "", requests=0, tokens=0)

    async def correct(self, scopes: Sequence[Scope], member: str, tokens: int) -> None:
        charged = [s for s in scopes if s.tpm]
        if not charged:
            return
        try:
            await self.counter.correct(charged, member, tokens, self.window_ms)
        except CounterDown:
            self.on_unenforced()

    def refusal(
        self, scopes: Sequence[Scope], counted: Decision, requests: int, tokens: int
    ) -> RateLimited:
        """429 `rate_limit_exceeded`, naming the limit (never an id)."""
        scope, kind, limit = refused_limit(scopes, counted, requests, tokens)
        self.on_limited(scope, kind)
        wait_s = max(1, math.ceil(counted.retry_ms / 1000))
        return RateLimited(
            f"Rate limit reached: the {scope}'s limit of {limit} {kind} per "
            f"{_window(self.settings.window_s)}. Please try again in {wait_s} s.",
            retry_after_s=wait_s,
        )


def _window(seconds: float) -> str:
    return "minute" if seconds == 60 else f"{seconds:g} s"
