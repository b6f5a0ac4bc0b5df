"""Where budget spend is counted: Redis (shared by every replica) or process memory (the
embedded default). Both keep per-period USD totals under keys that expire after the period,
and one-shot markers (alert sent) that are set once per key and period."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Protocol

from redis.asyncio import Redis
from redis.exceptions import RedisError

# Adds to every key and sets its expiry on first use; returns the new totals.
_ADD_LUA = """
local totals = {}
for i, key in ipairs(KEYS) do
    totals[i] = redis.call('INCRBYFLOAT', key, ARGV[1])
    if redis.call('TTL', key) < 0 then
        redis.call('EXPIRE', key, ARGV[i + 1])
    end
end
return totals
"""


class SpendUnavailable(Exception):
    """The spend store did not answer; budgets fail open."""


class SpendStore(Protocol):
    @property
    def backend(self) -> str: ...

    async def get(self, keys: Sequence[str]) -> list[float]:
        """The totals of `keys` (0 for absent ones)."""

    async def add(self, keys: Sequence[tuple[str, int]], amount: float) -> list[float]:
        """Adds `amount` to each (key, ttl seconds) atomically; returns the new totals."""

    async def mark_once(self, key: str, ttl_s: int) -> bool:
        """True the first time `key` is marked (until it expires), False after."""


class MemorySpend:
    """Totals in a dict; expired keys are pruned as new ones come."""

    backend = "memory"

    def __init__(self) -> None:
        self._totals: dict[str, tuple[float, float]] = {}  # key -> (total, expires at)
        self._marks: dict[str, float] = {}  # key -> expires at
        self._next_prune = 0.0

    async def get(self, keys: Sequence[str]) -> list[float]:
        now = time.monotonic()
        out = []
        for key in keys:
            item = self._totals.get(key)
            out.append(item[0] if item is not None and item[1] > now else 0.0)
        return out

    async def add(self, keys: Sequence[tuple[str, int]], amount: float) -> list[float]:
        now = time.monotonic()
        self._prune(now)
        out = []
        for key, ttl_s in keys:
            item = self._totals.get(key)
            if item is None or item[1] <= now:
                item = (0.0, now + ttl_s)
            item = (item[0] + amount, item[1])
            self._totals[key] = item
            out.append(item[0])
        return out

    async def mark_once(self, key: str, ttl_s: int) -> bool:
        now = time.monotonic()
        expires = self._marks.get(key)
        if expires is not None and expires > now:
            return False
        self._marks[key] = now + ttl_s
        return True

    def _prune(self, now: float) -> None:
        if now < self._next_prune:
            return
        self._next_prune = now + 60.0
        self._totals = {k: v for k, v in self._totals.items() if v[1] > now}
        self._marks = {k: v for k, v in self._marks.items() if v > now}


class RedisSpend:
    """INCRBYFLOAT totals via one Lua call (atomic across replicas), SET NX markers. Every
    command, waiting for its turn included, is bounded by `timeout_ms`; any failure raises
    SpendUnavailable.

    At most `max_in_flight` commands run at once: the client's plain pool fails a command at
    once when all its connections are busy (and shares them with the cache), so a burst of
    settles queues here rather than losing spend."""

    backend = "redis"

    def __init__(self, client: Redis, *, timeout_ms: int = 250, max_in_flight: int = 8) -> None:
        self._client = client
        self._timeout_s = timeout_ms / 1000
        self._add = client.register_script(_ADD_LUA)
        self._turns = asyncio.Semaphore(max_in_flight)

    async def get(self, keys: Sequence[str]) -> list[float]:
        try:
            async with asyncio.timeout(self._timeout_s), self._turns:
                values = await self._client.mget(list(keys))
        except (RedisError, OSError, TimeoutError) as exc:
            raise SpendUnavailable(type(exc).__name__) from exc
        return [float(v) if v is not None else 0.0 for v in values]

    async def add(self, keys: Sequence[tuple[str, int]], amount: float) -> list[float]:
        names = [key for key, _ in keys]
        args = [repr(float(amount)), *(str(ttl) for _, ttl in keys)]
        try:
            async with asyncio.timeout(self._timeout_s), self._turns:
                totals = await self._add(keys=names, args=args)
        except (RedisError, OSError, TimeoutError) as exc:
            raise SpendUnavailable(type(exc).__name__) from exc
        return [float(v) for v in totals]

    async def mark_once(self, key: str, ttl_s: int) -> bool:
        try:
            async with asyncio.timeout(self._timeout_s), self._turns:
                created = await self._client.set(key, b"1", nx=True, ex=ttl_s)
        except (RedisError, OSError, TimeoutError) as exc:
            raise SpendUnavailable(type(exc).__name__) from exc
        return bool(created)
