"""A bounded number of upstream calls in flight; waiting work goes by priority, then FIFO.

A waiter whose clients have all gone is dropped when its turn comes instead of spending an
upstream call on nobody (docs/design.md §4). Waiting is bounded: a request that gets no slot
within `queue_timeout_s` is refused with UpstreamBusy (503 + Retry-After) rather than queued
behind calls that may never end; low priority (warming, nobody waiting on it) may wait longer.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from enum import IntEnum

from proxy.failures import ClientGone, InvalidRequest, UpstreamBusy
from proxy.tracing import Tracer, Untraced

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
    def __init__(
        self,
        limit: int,
        queue_timeout_s: float = 5.0,
        low_queue_timeout_s: float | None = None,
        *,
        tracer: Tracer | None = None,
    ) -> None:
        self.limit = limit
        self.tracer = tracer or Untraced()
        self.queue_timeout_s = queue_timeout_s
        self.low_queue_timeout_s = max(queue_timeout_s, low_queue_timeout_s or queue_timeout_s)
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
            limit_s = self.low_queue_timeout_s if priority == Priority.LOW else self.queue_timeout_s
            try:
                # The releasing call hands its slot over (active is unchanged).
                with self.tracer.span("sidecache.queue_wait"):  # only a call that queues
                    await asyncio.wait((turn,), timeout=limit_s)
            except asyncio.CancelledError:
                if turn.done() and not turn.cancelled() and turn.exception() is None:
                    self._release()  # the slot was handed to us as we were cancelled
                turn.cancel()  # else: no longer waiting (_release skips done turns)
                raise
            if not turn.done():
                turn.cancel()
                raise self._busy(limit_s)
            turn.result()  # raises ClientGone when dropped for having nobody left
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

    def _busy(self, waited_s: float) -> UpstreamBusy:
        wait = max(1, math.ceil(self.queue_timeout_s))
        return UpstreamBusy(
            f"Every upstream slot stayed busy for {waited_s:g} s; Sidecache did not queue the "
            f"call any longer. Cached answers are still served. Retry in {wait} s.",
            retry_after_s=wait,
        )
