"""Requests taken from the shared log a few at a time (docs/design.md §13), so a busy hit path
does not pay a Redis script per hit.

A replica asks the log for a batch of requests at once; the script grants as many as fit (at
least one) and scores each at the lease's END (`LEASE_S` after the ask), so every leased
request, used whenever within the lease, is counted for at least a whole window after its use:
the log's guarantee (never more than the limit in any window's span, across replicas) holds.
A slot leased and not used is counted all the same (the limit errs low, never high). Batches
start at one, double only while a lease runs out before it lapses, after a lapse are as many
as the lapsed lease served, and never exceed a quarter of what the limit has left, so a quiet
or tightly limited tenant is counted one request at a time, exactly as without leases.

A busy lease asks for the next one AHEAD, once half of it is used (`ahead_wanted`): the next
batch is granted, and scored at its own end, while the current one still serves, so a busy
scope's hits do not stall for a script's round trip each time a lease runs out. The lease
ahead serves once the current one is used up or lapsed (its slots are scored at the end of
its own ask's lease, so the guarantee is the same).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence

from proxy.limits.types import Decision, Scope

LEASE_S = 0.05
MAX_BATCH = 256
_LEASES_KEPT = 10_000


class _Lease:
    __slots__ = ("ahead", "asking", "batch", "decision", "left", "missed", "until")

    def __init__(self) -> None:
        self.asking: asyncio.Future[None] | None = None  # an ask in flight
        self.decision: Decision | None = None  # the ask's decision (its `used`: all granted)
        self.left = 0  # granted, not yet used
        self.until = 0.0  # when the lease lapses (the clock's time)
        self.batch = 1  # the last ask's size
        self.missed = 0  # requests that waited for the last ask and found its batch used up
        # The next lease, asked for before this one ran out: its decision, slots and end.
        self.ahead: tuple[Decision, int, float] | None = None


class Leases:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._table: dict[Sequence[Scope], _Lease] = {}
        self._clock = clock

    def use(self, scopes: Sequence[Scope]) -> Decision | None:
        """One request from this replica's lease on `scopes`; None when it has none left."""
        lease = self._table.get(scopes)
        if lease is None:
            return None
        decision = lease.decision
        if lease.left <= 0 or decision is None or self._clock() >= lease.until:
            ahead, lease.ahead = lease.ahead, None
            if ahead is None or self._clock() >= ahead[2]:
                return None  # `left` stays: how much of a lapsed lease was used sizes the next
            decision, lease.left, lease.until = ahead
            lease.decision, lease.batch = decision, lease.left
        lease.left -= 1
        return _with_left(decision, lease.left)

    def ahead_wanted(self, scopes: Sequence[Scope]) -> bool:
        """Whether a busy lease is half used with no ask in flight nor lease ahead: time to ask
        for the next one."""
        lease = self._table.get(scopes)
        return (
            lease is not None
            and lease.batch > 1
            and lease.left <= lease.batch // 2
            and lease.asking is None
            and lease.ahead is None
        )

    def asking(self, scopes: Sequence[Scope]) -> asyncio.Future[None] | None:
        """The ask in flight for `scopes`: requests that come meanwhile wait for its batch
        rather than each asking for its own."""
        lease = self._table.get(scopes)
        return None if lease is None else lease.asking

    def ask(self, scopes: Sequence[Scope]) -> asyncio.Future[None]:
        lease = self._lease(scopes)
        lease.asking = asking = asyncio.get_running_loop().create_future()
        return asking

    def answered(self, scopes: Sequence[Scope], asking: asyncio.Future[None]) -> None:
        lease = self._table.get(scopes)
        if lease is not None and lease.asking is asking:
            lease.asking = None
        if not asking.done():
            asking.set_result(None)

    def missed(self, scopes: Sequence[Scope]) -> None:
        """A request waited for an ask whose batch was used up before its turn."""
        lease = self._table.get(scopes)
        if lease is not None:
            lease.missed += 1

    def _lease(self, scopes: Sequence[Scope]) -> _Lease:
        lease = self._table.get(scopes)
        if lease is None:
            if len(self._table) >= _LEASES_KEPT:
                self._table.clear()
            lease = self._table[tuple(scopes)] = _Lease()
        return lease

    def batch(self, scopes: Sequence[Scope]) -> tuple[int, float]:
        """How many requests to ask for, and when the ask was made."""
        now = self._clock()
        lease = self._table.get(scopes)
        if lease is None:
            return 1, now
        unused = lease.left if now < lease.until else 0
        if now < lease.until:  # run out (or half used, asking ahead) before it lapsed: busy
            size = min(max(lease.batch * 2, lease.missed + 1), MAX_BATCH)
        else:  # lapsed: as many as it served (one, for a quiet scope)
            size = min(max(1, lease.batch - lease.left), MAX_BATCH)
        lease.missed = 0
        use = lease.decision.requests if lease.decision is not None else None
        if use is not None:
            size = min(size, max(1, (use.limit - use.used + unused) // 4))
        return size, now

    def granted(
        self, scopes: Sequence[Scope], decision: Decision, granted: int, asked_at: float
    ) -> Decision:
        """Keeps what an ask granted beyond the request that made it; the request's decision."""
        lease = self._lease(scopes)
        lease.batch = max(1, granted)
        lease.left = max(0, granted - 1)
        lease.until = asked_at + LEASE_S
        lease.decision = decision if decision.allowed else None
        return _with_left(decision, lease.left) if lease.left else decision

    def granted_ahead(
        self, scopes: Sequence[Scope], decision: Decision, granted: int, asked_at: float
    ) -> None:
        """Keeps what an ask made ahead granted (every slot unused), to serve once the current
        lease is used up; nothing when it was refused (the next request asks for itself)."""
        if decision.allowed and granted > 0:  # its size is the lease's batch once it serves
            self._lease(scopes).ahead = (decision, granted, asked_at + LEASE_S)


def _with_left(decision: Decision, left: int) -> Decision:
    """One request's decision from a lease: the lease's, but the unused requests not `used`."""
    if decision.requests is None or not left:
        return decision
    return Decision(True, 0, decision.requests, decision.tokens, base=decision, left=left)
