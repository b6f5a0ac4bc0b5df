"""The embedded default store: in-process LRU with per-entry TTL, bounded by stored bytes."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from proxy.cache.lru import ByteLru
from proxy.cache.store import answer_in_turn

# Bookkeeping bytes charged per entry on top of key and value (dict slot, tuple, floats).
_OVERHEAD = 120


class MemoryStore:
    backend = "memory"

    def __init__(self, max_bytes: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._entries: ByteLru[str, tuple[bytes, float]] = ByteLru(max_bytes)
        self.shared_generation = 0  # invalidations are this process's own

    @property
    def available(self) -> bool:
        return True

    async def get(self, key: str) -> bytes | None:
        await answer_in_turn()
        return self._get(key, self._clock())

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        await answer_in_turn()
        now = self._clock()
        return [self._get(key, now) for key in keys]

    async def put(self, key: str, value: bytes, ttl_s: int) -> None:
        self._put(key, value, self._clock() + ttl_s)

    async def put_many(self, items: Sequence[tuple[str, bytes, int]]) -> None:
        now = self._clock()
        for key, value, ttl_s in items:
            self._put(key, value, now + ttl_s)

    async def ping(self) -> bool:
        return True

    def usage(self) -> tuple[int, int]:
        return len(self._entries), self._entries.bytes

    async def close(self) -> None:
        self._entries.clear()

    def _get(self, key: str, now: float) -> bytes | None:
        found = self._entries.get(key)
        if found is None:
            return None
        value, expires_at = found
        if expires_at <= now:
            self._entries.pop(key)
            return None
        return value

    def _put(self, key: str, value: bytes, expires_at: float) -> None:
        size = len(key) + len(value) + _OVERHEAD
        if not self._entries.put(key, (value, expires_at), size):
            self._entries.pop(key)  # larger than the whole cache: never stored, nor the old one
