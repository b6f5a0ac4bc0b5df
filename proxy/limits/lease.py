"""Requests taken from the shared log a few at a time (docs/design.md §13), so a busy hit path
does not pay a Redis script per hit.

A replica asks the log for a batch of requests at once; the script grants as many as fit (at
least one) and scores each at the lease's END (`LEASE_S` after the ask), so every leased
request, used whenever within the lease, is counted for at least a whole window after its use:
the log's guarantee (never more than the limit in any window's span, across replicas) holds.
A slot leased and not used is counted all the same (the limit errs low, never high). Batches
start at one and double only while a lease runs out before it lapses, and never exceed a
quarter of what the limit has left, so a quiet or tightly limited tenant is counted one request
at a time, exactly as without leases.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from proxy.limits.types import Decision, Scope, ScopeUse

LEASE_S = 0.05
MAX_BATCH = 64
_LEASES_KEPT = 10_000


class _Lease:
    __slots__ = ("batch", "decision", "left", "until")

    def __init__(self) -> None:
        self.decision: Decision | None = None  # the ask's decision (its `used`: all granted)
        self.left = 0  # granted, not yet used
        self.until = 0.0  # when the lease lapses (the clock's time)
        self.batch = 1  # the last ask's size


class Leases:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._table: dict[Sequence[Scope], _Lease] = {}
        self._clock = clock

    def use(self, scopes: Sequence[Scope]) -> Decision | None:
        """One request from this replica's lease on `scopes`; None when it has none left."""
        lease = self._table.get(scopes)
        if lease is None or lease.left <= 0 or lease.decision is None:
            return None
        if self._clock() >= lease.until:
            lease.left = 0
            return None
        lease.left -= 1
        return _with_left(lease.decision, lease.left)

    def batch(self, scopes: Sequence[Scope]) -> tuple[int, float]:
        """How many requests to ask for, and when the ask was made."""
        now = self._clock()
        lease = self._table.get(scopes)
        if lease is None:
            return 1, now
        # Run out before it lapsed: busy, ask for more; else start again from one.
        size = min(lease.batch * 2, MAX_BATCH) if now < lease.until else 1
        use = lease.decision.requests if lease.decision is not None else None
        if use is not None:
            size = min(size, max(1, (use.limit - use.used + lease.left) // 4))
        return size, now

    def granted(
        self, scopes: Sequence[Scope], decision: Decision, granted: int, asked_at: float
    ) -> Decision:
        """Keeps what an ask granted beyond the request that made it; the request's decision."""
        lease = self._table.get(scopes)
        if lease is None:
            if len(self._table) >= _LEASES_KEPT:
                self._table.clear()
            lease = self._table[tuple(scopes)] = _Lease()
        lease.batch = max(1, granted)
        lease.left = max(0, granted - 1)
        lease.until = asked_at + LEASE_S
        lease.decision = decision if decision.allowed else None
        return _with_left(decision, lease.left) if lease.left else decision


def _with_left(decision: Decision, left: int) -> Decision:
    """The decision as the headers tell it: the lease's unused requests are not `used`."""
    use = decision.requests
    if use is None or not left:
        return decision
    return Decision(
        decision.allowed,
        decision.retry_ms,
        ScopeUse(use.limit, use.used - left, use.reset_ms),
        decision.tokens,
    )
