"""A least-recently-used map bounded by the bytes its entries are charged: the one eviction
policy behind the memory store and the hit path's in-process tables."""

from __future__ import annotations

from collections import OrderedDict
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class ByteLru(Generic[K, V]):
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self.evictions = 0  # entries dropped to make room (not replaced, popped or cleared)
        self._items: OrderedDict[K, tuple[V, int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: K) -> V | None:
        found = self._items.get(key)
        if found is None:
            return None
        self._items.move_to_end(key)
        return found[0]

    def peek(self, key: K) -> V | None:
        """The value, leaving the order as it is."""
        found = self._items.get(key)
        return None if found is None else found[0]

    def put(self, key: K, value: V, size: int) -> bool:
        """Stores `value` as charged `size` bytes, evicting the least recently used entries
        as needed; False (and nothing stored) when it alone is larger than the whole map."""
        if size > self.max_bytes:
            return False
        self.pop(key)
        self._items[key] = (value, size)
        self.bytes += size
        while self.bytes > self.max_bytes:
            _, (_, evicted) = self._items.popitem(last=False)
            self.bytes -= evicted
            self.evictions += 1
        return True

    def pop(self, key: K) -> V | None:
        found = self._items.pop(key, None)
        if found is None:
            return None
        self.bytes -= found[1]
        return found[0]

    def clear(self) -> None:
        self._items.clear()
        self.bytes = 0
