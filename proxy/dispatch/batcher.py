"""Micro-batching: single-input embeddings and moderations requests that differ only in their
input share one upstream call (docs/design.md §4).

Requests with the same `BatchKey` (a lane) — endpoint, every body parameter but `input`,
`encoding_format` and `user`, and the upstream account (credential, organisation, project) —
are merged into one call of at most `batch.size` distinct inputs (and the kind's upstream
limits); a full batch is sent at once. Identical inputs in a batch are sent once.

The window adapts to arrivals (a burst from threaded clients trickles in over a few hundred
milliseconds; a fixed window split it into many calls): a request on an idle lane waits
`batch.wait_ms` for company, as a lone request always did. A request that comes less than
`batch.gap_ms` after the lane's previous one (a burst is under way) keeps its batch open until
`gap_ms` after it, and so on while arrivals keep coming, but never past `batch.max_wait_ms`
after the batch opened: the most a request waits for its batch.

The call goes through the guarded upstream (proxy/upstream/guarded.py: the gate, at the highest
priority in the batch, and the endpoint's breaker) like any other, and every request gets back
its own piece: a `Share`, the upstream's error `Answer`, or a `Failure` raised.

- A request whose client has gone before the call is sent is left out of it.
- A 400 that blames the input (its `param` is `input` or absent) is bisected: each half is
  sent again until the offending request fails alone and every other one is answered.
- Any other error (5xx, 429 answers; timeout, breaker open failures) is every request's, as is.

This module collects the requests into batches (the windows above); a batch's call and how
each request is answered are proxy/dispatch/batch_call.py. The shapes involved (keys, kinds,
shares) and the `X-Batch-Size` response header are in proxy/dispatch/batch_shapes.py.
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
from multidict import CIMultiDict

from proxy.dispatch.batch_call import Batch, Slot, Waiter, run_batch
from proxy.dispatch.batch_shapes import BatchKey, BatchKind, Share
from proxy.dispatch.flight import Answer
from proxy.settings import BatchSettings
from proxy.upstream.gate import Priority, Wanted
from proxy.upstream.guarded import GuardedUpstream

_encode = msgspec.json.Encoder(order="sorted").encode
_LANES_KEPT = 1024  # lanes remembered before idle ones are forgotten


class Batcher:
    def __init__(self, settings: BatchSettings, upstream: GuardedUpstream) -> None:
        self.size = settings.size
        self.wait_s = settings.wait_ms / 1000
        # A busy lane never waits less than an idle one.
        self.gap_s = max(settings.gap_ms, settings.wait_ms) / 1000
        self.max_wait_s = settings.max_wait_ms / 1000
        self._upstream = upstream
        self._open: dict[BatchKey, Batch] = {}
        self._last: dict[BatchKey, float] = {}  # each lane's latest arrival (loop time)
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def pending(self) -> int:
        """Requests waiting in batches not sent yet."""
        return sum(len(s.waiters) for b in self._open.values() for s in b.slots.values())

    async def submit(
        self,
        key: BatchKey,
        kind: BatchKind,
        item: Any,
        *,
        params: dict[str, Any],
        headers: CIMultiDict[str],
        priority: Priority,
        wanted: Wanted,
    ) -> Share | Answer:
        """This request's share of a merged call, or the upstream's error answer; raises the
        call's Failure (ClientGone when its client left first). `params` (the body
        without UNBATCHED_FIELDS) and `headers` (fit for the upstream) are used when this
        request opens the batch; `wanted` says whether its client still waits."""
        waiter = Waiter(asyncio.get_running_loop().create_future(), wanted, priority)
        self._join(key, kind, item, params, headers, waiter)
        return await waiter.future

    async def close(self) -> None:
        """Sends what is still collecting and waits (a bounded time) for calls under way."""
        for batch in list(self._open.values()):
            self._flush(batch)
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)

    def _join(
        self,
        key: BatchKey,
        kind: BatchKind,
        item: Any,
        params: dict[str, Any],
        headers: CIMultiDict[str],
        waiter: Waiter,
    ) -> None:
        ident = _encode(item)
        bound = len(item.encode()) if isinstance(item, str) else len(item)
        loop = asyncio.get_running_loop()
        now = loop.time()
        last = self._last.get(key)
        wait = self.gap_s if last is not None and now - last < self.gap_s else self.wait_s
        self._arrived(key, now)
        batch = self._open.get(key)
        if batch is not None and ident not in batch.slots and _too_full(batch, bound):
            self._flush(batch)
            batch = None
        if batch is None:
            batch = self._open[key] = Batch(key, kind, params, headers, opened=now)
            batch.due = now + min(wait, self.max_wait_s)
            if batch.due > now:
                batch.timer = loop.call_at(batch.due, self._expire, batch)
            else:  # still merges what arrives in this turn of the loop
                batch.timer = loop.call_soon(self._expire, batch)
        else:  # the timer, when it fires, looks at the new due time
            batch.due = max(batch.due, min(now + wait, batch.opened + self.max_wait_s))
        slot = batch.slots.get(ident)
        if slot is None:
            slot = batch.slots[ident] = Slot(item, bound, [])
            batch.bound += bound
        slot.waiters.append(waiter)
        if len(batch.slots) >= min(self.size, kind.max_inputs):
            self._flush(batch)

    def _arrived(self, key: BatchKey, now: float) -> None:
        self._last[key] = now
        if len(self._last) > _LANES_KEPT:  # forget idle lanes (many tenants, models)
            self._last = {k: t for k, t in self._last.items() if now - t < self.gap_s}
            if len(self._last) > _LANES_KEPT:  # all busy: forgetting only shortens waits
                self._last = {key: now}

    def _expire(self, batch: Batch) -> None:
        """The batch's timer: sends it, unless arrivals since the timer was set keep it open
        (one timer per batch, moved on only when it fires: nothing per arrival)."""
        loop = asyncio.get_running_loop()
        if batch.due > loop.time() and not batch.sent:
            batch.timer = loop.call_at(batch.due, self._expire, batch)
        else:
            self._flush(batch)

    def _flush(self, batch: Batch) -> None:
        if batch.sent:
            return
        batch.sent = True
        if batch.timer is not None:
            batch.timer.cancel()
        if self._open.get(batch.key) is batch:
            del self._open[batch.key]
        task = asyncio.create_task(
            run_batch(self._upstream, batch), name=f"batch-{batch.kind.endpoint}"
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _too_full(batch: Batch, bound: int) -> bool:
    limit = batch.kind.max_tokens
    return limit is not None and batch.bound + bound > limit
