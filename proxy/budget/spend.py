"""Where budget spend is counted: Redis (shared by every replica, proxy/budget/spend_redis.py)
or process memory (the embedded default, here). Both keep per-period USD totals under keys that
expire after the period, reservations held against them, a marker per key saying its total was
restored from the ledger, and one-shot markers (alert sent) set once per key and period.

Reserving is check-and-hold in one step: the memory store runs it without an `await` (atomic
in its event loop), the Redis store in one Lua script (atomic across replicas)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

RESERVED = ":r"  # suffix: the reservations held against a total (Redis: a sorted set by expiry)
RESERVED_SUM = ":rs"  # suffix: their sum (Redis), kept in step with the set by the scripts
SEEDED = ":s"  # suffix: the total was restored from the ledger this period


class SpendUnavailable(Exception):
    """The spend store did not answer."""


@dataclass(frozen=True, slots=True)
class Check:
    """One limited budget a reservation must fit: its total's key, limit and key expiry."""

    key: str
    limit_usd: float
    ttl_s: int


@dataclass(frozen=True, slots=True)
class Verdict:
    """What `reserve` found: `refused` is the index of the first budget that does not fit
    (None: all fit, the amount is held), with that budget's spent and reserved USD; `unseeded`
    lists the budgets not yet restored from the ledger (nothing was checked or held then)."""

    refused: int | None = None
    spent: float = 0.0
    reserved: float = 0.0
    unseeded: tuple[int, ...] = ()


class SpendStore(Protocol):
    @property
    def backend(self) -> str: ...

    async def get(self, keys: Sequence[str]) -> list[float]:
        """The totals of `keys` (0 for absent ones)."""

    async def reserve(
        self, checks: Sequence[Check], amount: float, member: str, hold_s: float, seeded: bool
    ) -> Verdict:
        """Holds `amount` against every check's key under `member` for `hold_s`, only when
        total + held + amount fits every limit (and no total is used up). With `seeded`, first
        answers which keys lack their restored-from-the-ledger marker."""

    async def settle(
        self, keys: Sequence[tuple[str, int]], amount: float, member: str, once: str
    ) -> list[float]:
        """Releases `member`'s hold (if any) and adds `amount` to each (key, ttl seconds), once
        per `once` (a retried settle that already landed adds nothing); returns the totals."""

    async def seed(self, key: str, ttl_s: int, total: float) -> None:
        """Raises the total of `key` to `total` (never lowers it) and marks it restored, unless
        it was marked already this period."""

    async def mark_once(self, key: str, ttl_s: int) -> bool:
        """True the first time `key` is marked (until it expires), False after."""


def held_amount(member: str) -> float:
    """The USD a reservation holds, written in its member (`<id>|<usd>`) so an expired one can
    be subtracted without another lookup."""
    return float(member.rpartition("|")[2])


class MemorySpend:
    """Totals in a dict; expired keys are pruned as new ones come."""

    backend = "memory"

    def __init__(self) -> None:
        self._totals: dict[str, tuple[float, float]] = {}  # key -> (total, expires at)
        self._holds: dict[str, dict[str, float]] = {}  # key -> {member: expires at}
        self._marks: dict[str, float] = {}  # key -> expires at (alerts, seeds, settles)
        self._next_prune = 0.0

    async def get(self, keys: Sequence[str]) -> list[float]:
        now = time.monotonic()
        return [self._total(key, now) for key in keys]

    async def reserve(
        self, checks: Sequence[Check], amount: float, member: str, hold_s: float, seeded: bool
    ) -> Verdict:
        now = time.monotonic()
        if seeded:
            missing = tuple(i for i, c in enumerate(checks) if not self._marked(c.key + SEEDED))
            if missing:
                return Verdict(unseeded=missing)
        for i, check in enumerate(checks):
            spent, held = self._total(check.key, now), self._held(check.key, now)
            if spent >= check.limit_usd or spent + held + amount > check.limit_usd:
                return Verdict(refused=i, spent=spent, reserved=held)
        for check in checks:
            self._holds.setdefault(check.key, {})[member] = now + hold_s
        return Verdict()

    async def settle(
        self, keys: Sequence[tuple[str, int]], amount: float, member: str, once: str
    ) -> list[float]:
        now = time.monotonic()
        self._prune(now)
        for key, _ in keys:
            self._holds.get(key, {}).pop(member, None)
        # `once` is not kept: a settle here never fails, so it is never retried (and a marker
        # per settle would only grow the dict).
        out = []
        for key, ttl_s in keys:
            item = self._totals.get(key)
            if item is None or item[1] <= now:
                item = (0.0, now + ttl_s)
            item = (item[0] + amount, item[1])
            self._totals[key] = item
            out.append(item[0])
        return out

    async def seed(self, key: str, ttl_s: int, total: float) -> None:
        now = time.monotonic()
        if not await self.mark_once(key + SEEDED, ttl_s):
            return
        if total > self._total(key, now):
            item = self._totals.get(key)
            expires = item[1] if item is not None and item[1] > now else now + ttl_s
            self._totals[key] = (total, expires)

    async def mark_once(self, key: str, ttl_s: int) -> bool:
        now = time.monotonic()
        if self._marked(key):
            return False
        self._marks[key] = now + ttl_s
        return True

    def _marked(self, key: str) -> bool:
        expires = self._marks.get(key)
        return expires is not None and expires > time.monotonic()

    def _total(self, key: str, now: float) -> float:
        item = self._totals.get(key)
        return item[0] if item is not None and item[1] > now else 0.0

    def _held(self, key: str, now: float) -> float:
        holds = self._holds.get(key)
        if not holds:
            return 0.0
        for member in [m for m, expires in holds.items() if expires <= now]:
            del holds[member]  # the process that held it never settled: its hold lapses
        return sum(held_amount(m) for m in holds)

    def _prune(self, now: float) -> None:
        if now < self._next_prune:
            return
        self._next_prune = now + 60.0
        self._totals = {k: v for k, v in self._totals.items() if v[1] > now}
        self._marks = {k: v for k, v in self._marks.items() if v > now}
        for key in [k for k, holds in self._holds.items() if not holds]:
            del self._holds[key]
