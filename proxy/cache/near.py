"""The near cache: the raw bytes of hot Redis entries, kept in this process.

A byte-bounded LRU whose entries carry an absolute expiry on the monotonic clock, set from the
key's remaining TTL in Redis when the entry was read, so a near entry never outlives its Redis
copy. It holds the very bytes the Redis store returns, so every layer above (decoding, the
invalidation check, the semantic cache, embedding items) reads them unchanged.

Keeping it right across replicas is `proxy.cache.tracking`'s job: it drops keys as Redis reports
them changed, and clears and bypasses the whole cache while it cannot hear those reports.
`epoch` counts every drop and clear, so a read that raced one is not filled in (`fill`).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from proxy.cache.lru import ByteLru

# What an entry costs beyond its key and value: the dict slot, the tuple, two objects' headers.
ENTRY_OVERHEAD = 160


class NearCache:
    def __init__(self, max_bytes: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._entries: ByteLru[str, tuple[bytes, float]] = ByteLru(max_bytes)
        # Served only while invalidations are heard (the tracking connection is up).
        self.enabled = False
        self.epoch = 0
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def max_bytes(self) -> int:
        return self._entries.max_bytes

    @property
    def held_bytes(self) -> int:
        return self._entries.bytes

    def __contains__(self, key: str) -> bool:
        return self.expires_at(key) is not None

    def expires_at(self, key: str) -> float | None:
        """When the near copy of `key` stops being served (None: there is none); a peek that
        neither counts as a lookup nor makes the entry more recently used."""
        item = self._entries.peek(key)
        return None if item is None else item[1]

    @property
    def evictions(self) -> int:
        return self._entries.evictions

    def get(self, key: str) -> bytes | None:
        item = self._entries.get(key)
        if item is None:
            self.misses += 1
            return None
        if item[1] <= self._clock():
            self._entries.pop(key)
            self.misses += 1
            return None
        self.hits += 1
        return item[0]

    def fill(self, key: str, value: bytes, ttl_ms: int, epoch: int) -> None:
        """Keeps a value read from Redis with `ttl_ms` left there, unless an invalidation (or a
        clear) came between sending the read (`epoch` was read then) and its reply."""
        if epoch != self.epoch or not self.enabled or ttl_ms <= 0:
            return
        expires_at = self._clock() + ttl_ms / 1000
        self._entries.put(key, (value, expires_at), len(key) + len(value) + ENTRY_OVERHEAD)

    def drop(self, key: str) -> None:
        self.epoch += 1
        self._entries.pop(key)

    def clear(self) -> None:
        self.epoch += 1
        self._entries.clear()

    def enable(self) -> None:
        self.clear()
        self.enabled = True

    def disable(self) -> None:
        self.enabled = False
        self.clear()
