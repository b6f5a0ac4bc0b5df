"""Settles the spend store did not take, retried until it does (issue #19, item 4).

Counting spend must not be lossy: a settle that fails (Redis busy, down, or a burst longer
than the queue's patience) waits here and a background task retries it, oldest first, backing
off while the store keeps failing. Retries are exact: each settle carries a once-marker id, so
one that landed although its answer was lost adds nothing the second time. The backlog is
bounded (`max_pending`); what overflows it is counted as dropped, and the ledger restore
(proxy/budget/restore.py) makes up for it after a Redis restart."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from proxy.budget.spend import SpendUnavailable

log = logging.getLogger("sidecache.budget")
J = TypeVar("J")
_FIRST_PAUSE_S = 0.05
_LONGEST_PAUSE_S = 2.0


class SettleBacklog(Generic[J]):
    def __init__(self, apply: Callable[[J], Awaitable[None]], *, max_pending: int = 100_000):
        self._apply = apply
        self._jobs: deque[J] = deque()
        self._max = max_pending
        self._task: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        self.dropped = 0

    @property
    def pending(self) -> int:
        return len(self._jobs)

    def add(self, job: J) -> None:
        if len(self._jobs) >= self._max:
            self._jobs.popleft()
            self.dropped += 1
        self._jobs.append(job)
        self._idle.clear()
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._retry(), name="sidecache-settles")

    async def _retry(self) -> None:
        pause = _FIRST_PAUSE_S
        while self._jobs:
            await asyncio.sleep(pause)
            try:
                while self._jobs:
                    job = self._jobs.popleft()
                    try:
                        await self._apply(job)
                    except SpendUnavailable:
                        self._jobs.appendleft(job)
                        raise
                pause = _FIRST_PAUSE_S
            except SpendUnavailable:
                pause = min(pause * 2, _LONGEST_PAUSE_S)
        self._idle.set()

    async def drain(self, timeout_s: float) -> bool:
        """Waits until every settle has landed (True) or `timeout_s` passed (False)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._idle.wait()
        return self._idle.is_set()

    async def close(self, timeout_s: float = 5.0) -> None:
        if not await self.drain(timeout_s):
            log.warning("budget spend not counted at shutdown: %d settles", len(self._jobs))
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
