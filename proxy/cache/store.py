"""The cache store contract shared by the memory and Redis stores.

Stores never raise for a backend failure: a failed read is a miss and a failed write is
dropped, so the proxy keeps serving as a pass-through; the store counts the failure and
reports `available = False` until the backend answers again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Protocol


async def answer_in_turn() -> None:
    """Lets the loop run every other ready request before this one goes on. A store that
    answers from process memory calls it once per read, so its hits are served in phases as
    the Redis store's are (all ready requests parsed, then all answers written back to back)
    rather than each request parsed and written in one go: measured under wrk (issue #22),
    answering inline cost about 25% more CPU per hit (user and system time) than this one
    extra task step, as each answer's send woke the client between two requests' work."""
    await asyncio.sleep(0)


class CacheStore(Protocol):
    backend: str
    # The newest invalidation generation the store's reads have seen in a shared backend (read
    # in the same round trip as entries); 0 where invalidations are local to this process.
    shared_generation: int

    @property
    def available(self) -> bool: ...

    async def get(self, key: str) -> bytes | None: ...

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]: ...

    async def put(self, key: str, value: bytes, ttl_s: int) -> None: ...

    async def put_many(self, items: Sequence[tuple[str, bytes, int]]) -> None: ...

    async def ping(self) -> bool: ...

    def usage(self) -> tuple[int, int]:
        """(entries, bytes) where the store can tell cheaply; (-1, -1) where it cannot."""
        ...

    async def close(self) -> None: ...
