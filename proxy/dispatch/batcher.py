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

The shapes involved (keys, kinds, shares) and the `X-Batch-Size` response header are in
proxy/dispatch/batch_shapes.py.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
from multidict import CIMultiDict

from proxy.dispatch.batch_shapes import BatchKey, BatchKind, Share, blames_input
from proxy.dispatch.flight import Answer
from proxy.failures import BadUpstreamAnswer, ClientGone, Failure, UpstreamError
from proxy.settings import BatchSettings
from proxy.upstream.exchange import UpstreamRequest
from proxy.upstream.gate import Priority
from proxy.upstream.guarded import GuardedUpstream
from proxy.vectors import apportion

log = logging.getLogger("sidecache.batcher")
_encode = msgspec.json.Encoder(order="sorted").encode

Wanted = Callable[[], bool]
_LANES_KEPT = 1024  # lanes remembered before idle ones are forgotten


@dataclass(slots=True)
class _Waiter:
    future: asyncio.Future[Share | Answer]
    wanted: Wanted
    priority: Priority


@dataclass(slots=True)
class _Slot:
    """One distinct input of a batch and the requests waiting for it."""

    item: Any
    bound: int
    waiters: list[_Waiter]


@dataclass(slots=True)
class _Batch:
    key: BatchKey
    kind: BatchKind
    params: dict[str, Any]
    headers: CIMultiDict[str]
    slots: dict[bytes, _Slot] = field(default_factory=dict)
    bound: int = 0
    opened: float = 0.0  # loop time of its first request
    due: float = 0.0  # when it goes unless more requests keep it open (loop time)
    timer: asyncio.Handle | None = None
    sent: bool = False


class Batcher:
    def __init__(self, settings: BatchSettings, upstream: GuardedUpstream) -> None:
        self.size = settings.size
        self.wait_s = settings.wait_ms / 1000
        # A busy lane never waits less than an idle one.
        self.gap_s = max(settings.gap_ms, settings.wait_ms) / 1000
        self.max_wait_s = settings.max_wait_ms / 1000
        self._upstream = upstream
        self._open: dict[BatchKey, _Batch] = {}
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
        waiter = _Waiter(asyncio.get_running_loop().create_future(), wanted, priority)
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
        waiter: _Waiter,
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
            batch = self._open[key] = _Batch(key, kind, params, headers, opened=now)
            batch.due = now + min(wait, self.max_wait_s)
            if batch.due > now:
                batch.timer = loop.call_at(batch.due, self._expire, batch)
            else:  # still merges what arrives in this turn of the loop
                batch.timer = loop.call_soon(self._expire, batch)
        else:  # the timer, when it fires, looks at the new due time
            batch.due = max(batch.due, min(now + wait, batch.opened + self.max_wait_s))
        slot = batch.slots.get(ident)
        if slot is None:
            slot = batch.slots[ident] = _Slot(item, bound, [])
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

    def _expire(self, batch: _Batch) -> None:
        """The batch's timer: sends it, unless arrivals since the timer was set keep it open
        (one timer per batch, moved on only when it fires: nothing per arrival)."""
        loop = asyncio.get_running_loop()
        if batch.due > loop.time() and not batch.sent:
            batch.timer = loop.call_at(batch.due, self._expire, batch)
        else:
            self._flush(batch)

    def _flush(self, batch: _Batch) -> None:
        if batch.sent:
            return
        batch.sent = True
        if batch.timer is not None:
            batch.timer.cancel()
        if self._open.get(batch.key) is batch:
            del self._open[batch.key]
        task = asyncio.create_task(self._run(batch), name=f"batch-{batch.kind.endpoint}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, batch: _Batch) -> None:
        slots = list(batch.slots.values())
        try:
            await self._send(batch, slots)
        except Exception:
            log.exception("a batched %s call failed unexpectedly", batch.kind.endpoint)
        finally:  # whatever happened, nobody is left waiting
            _fail(slots, UpstreamError("The sidecar failed calling the upstream."))

    async def _send(self, batch: _Batch, slots: list[_Slot]) -> None:
        slots = _live(slots)
        if not slots:
            return

        def body() -> bytes:
            """The inputs of the requests still waiting when the call's turn comes."""
            nonlocal slots
            slots = _live(slots)
            if not slots:
                raise ClientGone()
            return _encode({**batch.params, **batch.kind.extra, "input": [s.item for s in slots]})

        request = UpstreamRequest(
            endpoint=batch.kind.endpoint,
            path=batch.key.path,
            headers=batch.headers,
            body=body,
            priority=min(w.priority for s in slots for w in s.waiters),
            model=model if isinstance(model := batch.params.get("model"), str) else None,
        )
        try:
            reply = await self._upstream.call(request, lambda: _wanted(slots))
        except Failure as exc:  # breaker open, timeout, unreachable, everyone gone
            _fail(slots, exc)
            return
        answer = Answer(reply.status, reply.headers, reply.body)
        if answer.status == 200:
            self._deliver(batch, slots, answer)
        elif answer.status == 400 and len(slots) > 1 and blames_input(answer.body):
            half = len(slots) // 2
            await asyncio.gather(self._send(batch, slots[:half]), self._send(batch, slots[half:]))
        else:
            _settle(slots, answer)

    def _deliver(self, batch: _Batch, slots: list[_Slot], answer: Answer) -> None:
        try:
            split = batch.kind.split(answer.body, len(slots))
        except ValueError as exc:
            _fail(slots, BadUpstreamAnswer(f"The upstream API sent {exc}."))
            return
        requests = sum(len(s.waiters) for s in slots)
        total = split.prompt_tokens or 0
        # By length, as the per-item cache splits a call's usage (vectors.apportion).
        weights = [len(s.item) for s in slots]
        for slot, part, item_tokens in zip(
            slots, split.parts, apportion(total, weights), strict=True
        ):
            own = apportion(item_tokens, [1] * len(slot.waiters))
            for waiter, tokens in zip(slot.waiters, own, strict=True):
                if not waiter.future.done():
                    share = Share(
                        part,
                        tokens,
                        item_tokens,
                        split.rest,
                        answer.headers,
                        requests,
                        split.prompt_tokens is not None,
                    )
                    waiter.future.set_result(share)


def _too_full(batch: _Batch, bound: int) -> bool:
    limit = batch.kind.max_tokens
    return limit is not None and batch.bound + bound > limit


def _live(slots: list[_Slot]) -> list[_Slot]:
    """The slots with a request still waiting; requests whose client has gone are answered
    (nobody reads it) and left out."""
    kept = []
    for slot in slots:
        waiting = []
        for waiter in slot.waiters:
            if waiter.future.done():
                continue  # the handler was cancelled
            if waiter.wanted():
                waiting.append(waiter)
            else:
                waiter.future.set_exception(ClientGone())
        slot.waiters = waiting
        if waiting:
            kept.append(slot)
    return kept


def _wanted(slots: list[_Slot]) -> bool:
    return any(not w.future.done() and w.wanted() for s in slots for w in s.waiters)


def _settle(slots: list[_Slot], answer: Answer) -> None:
    for slot in slots:
        for waiter in slot.waiters:
            if not waiter.future.done():
                waiter.future.set_result(answer)


def _fail(slots: list[_Slot], failure: Failure) -> None:
    for slot in slots:
        for waiter in slot.waiters:
            if not waiter.future.done():
                waiter.future.set_exception(failure)
