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

A busy lease asks for the next one AHEAD, once half of it is used or once it has `AHEAD_S`
left to run, whichever comes first: the next batch is granted, and scored at its own end,
while the current one still serves, so a busy scope's hits do not stall for a script's round
trip each time a lease runs out or lapses. The lease ahead serves once the current one is
used up or lapsed (its slots are scored at the end of its own ask's lease, so the guarantee is
the same). Asked for on time, it is sized by what the current lease has served so far, not
doubled: that lease did not run out.

A `Lease` belongs to one set of scopes and is kept with them (`Limits`), so a leased hit finds
it without a lookup of its own: the hit path's whole rate check is one attribute read, one
clock read and one decrement.

Every request a lease serves answers with the lease's decision: its remaining requests header
is what the shared log had left once the whole batch was counted, never more than the limit has
left, on every replica alike (docs/design.md §13, "Headers"). It falls a lease at a time: one
request at a time for a quiet scope, and in ever smaller steps near the limit (a batch is at
most a quarter of what is left).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable

from proxy.limits.types import Decision, Scope

# A lease's length. At 50 ms a busy scope's lease of a few hundred lapsed before it was half
# used (no lease asked ahead), and 2.5 % of hits under `wrk -c32` at ~10k/s waited for an ask;
# at 200 ms, 0.07 %. The price: a leased slot is counted up to 200 ms later than its use (the
# limit errs low, never high), and the requests' reset header reads 200 ms longer.
LEASE_S = 0.2
# A busy lease asks for the next one this long before it lapses, if it has not yet (half used):
# a lease larger than its scope's hits in `LEASE_S` would otherwise lapse with no lease ahead,
# and the hits that came during the next ask's round trip waited for it (~1 % of hits at ~3k
# hits/s, for a round trip each 0.4 s). Far longer than a round trip; a lease asked for then
# serves the last `LEASE_S - AHEAD_S` of its own.
AHEAD_S = 0.04
# A batch's bound: a lease of 1,024 runs out before it lapses from ~5k hits per second.
MAX_BATCH = 1024
_NOT_GRANTED = Decision(False)  # a lease's decision before (or after a refused) ask


class Lease:
    __slots__ = (
        "_ask_ahead",
        "_clock",
        "ahead",
        "ahead_at",
        "ahead_by",
        "asking",
        "batch",
        "decision",
        "left",
        "missed",
        "until",
    )

    def __init__(self, clock: Callable[[], float], ask_ahead: Callable[[Lease], None]) -> None:
        self._clock = clock
        self._ask_ahead = ask_ahead  # sends the ask for the lease ahead (the limiter's)
        self.asking: asyncio.Future[None] | None = None  # an ask in flight
        self.decision = _NOT_GRANTED  # the ask's decision (its `used`: all granted)
        self.left = 0  # granted, not yet used
        self.until = 0.0  # when the lease lapses (the clock's time)
        self.batch = 1  # the last ask's size
        self.ahead_at = -1  # `left` at which to ask ahead: half used (-1: never, a batch of 1)
        self.ahead_by = math.inf  # when to ask ahead if not half used by then (never: a batch of 1)
        self.missed = 0  # requests that waited for the last ask and found its batch used up
        # The next lease, asked for before this one ran out: its decision, slots and end.
        self.ahead: tuple[Decision, int, float] | None = None

    def use(self) -> Decision | None:
        """One request from this lease (asking for the lease ahead once half of it is used);
        None when it has none left. The whole of a leased hit's check, so kept to a few reads:
        its decision is the lease's own, shared by every request the lease serves."""
        left = self.left - 1
        now = self._clock()
        if left < 0 or now >= self.until:
            ahead, self.ahead = self.ahead, None
            if ahead is None or now >= ahead[2]:
                return None  # `left` stays: how much of a lapsed lease was used sizes the next
            self.decision, granted, self.until = ahead
            self._fill(granted, granted)
            left = granted - 1
        self.left = left
        if (
            (left == self.ahead_at or now >= self.ahead_by)
            and self.asking is None
            and self.ahead is None
        ):
            self.ahead_by = math.inf  # on time, once per lease (a refused ask is not repeated)
            self._ask_ahead(self)
        return self.decision

    def _fill(self, batch: int, left: int) -> None:
        """A new lease of `batch` with `left` unused, lapsing at `until`: it asks ahead once half
        used (at its first use, when a small batch is that already) or `AHEAD_S` before it
        lapses; a batch of one never does (a quiet scope is counted a request at a time)."""
        self.batch, self.left = batch, left
        busy = batch > 1
        self.ahead_at = min(batch // 2, left - 1) if busy else -1
        self.ahead_by = self.until - AHEAD_S if busy else math.inf

    def ask(self) -> asyncio.Future[None]:
        """An ask is in flight: requests that come meanwhile wait for its batch (`asking`)
        rather than each asking for its own."""
        self.asking = asking = asyncio.get_running_loop().create_future()
        return asking

    def answered(self, asking: asyncio.Future[None]) -> None:
        if self.asking is asking:
            self.asking = None
        if not asking.done():
            asking.set_result(None)

    def sizing(self) -> tuple[int, float]:
        """How many requests to ask for, and when the ask was made."""
        now = self._clock()
        live = now < self.until
        unused = self.left if live else 0
        served = self.batch - self.left
        if live and self.left > self.ahead_at:  # asked ahead on time, less than half used
            size = min(max(2 * served, self.missed + 1), MAX_BATCH)
        elif live:  # run out (or half used, asking ahead) before it lapsed: busy
            size = min(max(self.batch * 2, self.missed + 1), MAX_BATCH)
        else:  # lapsed: as many as it served (one, for a quiet scope)
            size = min(max(1, served), MAX_BATCH)
        self.missed = 0
        use = self.decision.requests
        if use is not None:
            size = min(size, max(1, (use.limit - use.used + unused) // 4))
        return size, now

    def granted(self, decision: Decision, granted: int, asked_at: float) -> Decision:
        """Keeps what an ask granted beyond the request that made it; the request's decision."""
        self.until = asked_at + LEASE_S
        if not decision.allowed:
            self.decision = _NOT_GRANTED
            self._fill(max(1, granted), 0)
            return decision
        self.decision = decision
        self._fill(max(1, granted), max(0, granted - 1))
        return decision

    def granted_ahead(self, decision: Decision, granted: int, asked_at: float) -> None:
        """Keeps what an ask made ahead granted (every slot unused), to serve once the current
        lease is used up; nothing when it was refused (the next request asks for itself)."""
        if decision.allowed and granted > 0:  # its size is the lease's batch once it serves
            self.ahead = (decision, granted, asked_at + LEASE_S)


class Limits:
    """A (tenant, user)'s scopes with some limit, and this replica's lease of requests on them
    (None without a shared counter: each request is counted on its own)."""

    __slots__ = ("lease", "scopes")

    def __init__(self, scopes: tuple[Scope, ...], lease: Lease | None) -> None:
        self.scopes = scopes
        self.lease = lease
