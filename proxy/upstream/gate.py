"""A bounded number of upstream calls in flight; waiting work goes by priority, then FIFO.

A waiter whose clients have all gone is dropped when its turn comes instead of spending an
upstream call on nobody (docs/design.md §4).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from enum import IntEnum

from proxy.failures import ClientGone, InvalidRequest

PRIORITY_HEADER = "X-Priority"


class Priority(IntEnum):
    HIGH = 0
    NORMAL = 1
    LOW = 2  # cache warming


_BY_NAME = {p.name.lower(): p for p in Priority}


def parse_priority(value: str | None) -> Priority:
    if value is None:
        return Priority.NORMAL
    found = _BY_NAME.get(value.strip().lower())
    if found is None:
        raise InvalidRequest(
            f"{PRIORITY_HEADER} must be one of: high, normal, low (got {value.strip()!r})",
            param=PRIORITY_HEADER,
        )
    return found


Wanted = Callable[[], bool]


class UpstreamGate:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.active = 0
        self._waiting: list[tuple[int, int, asyncio.Future[None], Wanted]] = []
        self._order = itertools.count()

    @property
    def queued(self) -> int:
        return len(self._waiting)

    @asynccontextmanager
    async def slot(self, priority: Priority, wanted: Wanted) -> AsyncIterator[None]:
        if self.active < self.limit and not self._waiting:
            self.active += 1
        else:
            turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            heapq.heappush(self._waiting, (priority, next(self._order), turn, wanted))
            try:
                await turn  # the releasing call hands its slot over (active is unchanged)
            except asyncio.CancelledError:
                if turn.done() and not turn.cancelled() and turn.exception() is None:
                    self._release()  # the slot was handed to us as we were cancelled
                raise
        try:
            yield
        finally:
            self._release()

    def _release(self) -> None:
        while self._waiting:
            _, _, turn, wanted = heapq.heappop(self._waiting)
            if turn.done():
                continue  # cancelled while waiting
            if not wanted():
                turn.set_exception(ClientGone())  # it never reached the upstream
                continue
            turn.set_result(None)
            return
        self.active -= 1
