"""Micro-batching: single-input embeddings and moderations requests that differ only in their
input share one upstream call (DESIGN §4).

Requests with the same `BatchKey` — endpoint, every body parameter but `input`,
`encoding_format` and `user`, and the upstream account (credential, organisation, project) —
that arrive within `batch.wait_ms` of the first are merged into one call of at most
`batch.size` distinct inputs (and the kind's upstream limits). Identical inputs in a batch are
sent once. The call goes through the upstream gate (at the highest priority in the batch) and
the endpoint's breaker like any other, and every request gets back its own piece: a `Share`,
or an error `Answer`.

- A request whose client has gone before the call is sent is left out of it.
- A 400 that blames the input (its `param` is `input` or absent) is bisected: each half is
  sent again until the offending request fails alone and every other one is answered.
- Any other error (5xx, 429, timeout, breaker open) is every request's answer, unchanged.

The shapes involved (keys, kinds, shares) and the `X-Batch-Size` response header are in
proxy/dispatch/batch_shapes.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
from multidict import CIMultiDict

from proxy.dispatch.batch_shapes import BatchKey, BatchKind, Share, error_answer
from proxy.dispatch.flight import Answer
from proxy.dispatch.gate import Abandoned, Priority, UpstreamGate
from proxy.errors import ApiError
from proxy.metrics import Metrics
from proxy.settings import BatchSettings
from proxy.upstream.breakers import BreakerBoard, UpstreamFailure
from proxy.upstream.client import UpstreamClient, read_body
from proxy.upstream.headers import client_response_headers
from proxy.vectors import apportion

log = logging.getLogger("sidecache.batcher")
_encode = msgspec.json.Encoder(order="sorted").encode
_decode_error = msgspec.json.Decoder().decode

Wanted = Callable[[], bool]


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
    timer: asyncio.Handle | None = None
    sent: bool = False


class Batcher:
    def __init__(
        self,
        settings: BatchSettings,
        gate: UpstreamGate,
        breakers: BreakerBoard,
        upstream: UpstreamClient,
        metrics: Metrics,
    ) -> None:
        self.size = settings.size
        self.wait_s = settings.wait_ms / 1000
        self._gate = gate
        self._breakers = breakers
        self._upstream = upstream
        self._metrics = metrics
        self._open: dict[BatchKey, _Batch] = {}
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
        """This request's share of a merged call, or the error it gets. `params` (the body
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
        batch = self._open.get(key)
        if batch is not None and ident not in batch.slots and _too_full(batch, bound):
            self._flush(batch)
            batch = None
        if batch is None:
            batch = self._open[key] = _Batch(key, kind, params, headers)
            loop = asyncio.get_running_loop()
            if self.wait_s > 0:
                batch.timer = loop.call_later(self.wait_s, self._flush, batch)
            else:  # still merges what arrives in this turn of the loop
                batch.timer = loop.call_soon(self._flush, batch)
        slot = batch.slots.get(ident)
        if slot is None:
            slot = batch.slots[ident] = _Slot(item, bound, [])
            batch.bound += bound
        slot.waiters.append(waiter)
        if len(batch.slots) >= min(self.size, kind.max_inputs):
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
            failed = ApiError(502, "The sidecar failed calling the upstream.")
            _settle(slots, error_answer(failed))

    async def _send(self, batch: _Batch, slots: list[_Slot]) -> None:
        slots = _live(slots)
        if not slots:
            return
        priority = min(w.priority for s in slots for w in s.waiters)
        try:
            self._breakers.for_endpoint(batch.kind.endpoint).admit()
            async with self._gate.slot(priority, lambda: _wanted(slots)):
                slots = _live(slots)  # clients may have left while the call waited its turn
                if not slots:
                    return
                answer = await self._call(batch, slots)
        except ApiError as exc:  # breaker open, timeout, unreachable, everyone gone
            _settle(slots, error_answer(exc))
            return
        if answer.status == 200:
            self._deliver(batch, slots, answer)
        elif answer.status == 400 and len(slots) > 1 and _blames_input(answer.body):
            half = len(slots) // 2
            await asyncio.gather(self._send(batch, slots[:half]), self._send(batch, slots[half:]))
        else:
            _settle(slots, answer)

    async def _call(self, batch: _Batch, slots: list[_Slot]) -> Answer:
        endpoint = batch.kind.endpoint
        body = {**batch.params, **batch.kind.extra, "input": [s.item for s in slots]}
        breaker = self._breakers.for_endpoint(endpoint)
        try:
            with breaker.guard():
                started = time.perf_counter()
                upstream = await self._upstream.send(
                    "POST", batch.key.path, batch.headers, _encode(body)
                )
                elapsed = time.perf_counter() - started
                self._metrics.observe_upstream(endpoint, upstream.status, elapsed)
                payload = await read_body(upstream)
                relayed = client_response_headers(upstream.headers, decoded=True)
                answer = Answer(upstream.status, relayed, payload)
                if upstream.status >= 500:
                    raise UpstreamFailure(upstream.status, answer)
        except UpstreamFailure:
            pass  # counted by the breaker; relayed to every request like any other error
        return answer

    def _deliver(self, batch: _Batch, slots: list[_Slot], answer: Answer) -> None:
        try:
            split = batch.kind.split(answer.body, len(slots))
        except ValueError as exc:
            bad = ApiError(502, f"The upstream API sent {exc}.", code="bad_upstream_answer")
            _settle(slots, error_answer(bad))
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
                waiter.future.set_result(error_answer(Abandoned()))
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


def _blames_input(body: bytes) -> bool:
    """Whether a 400 may be one input's fault (then bisecting finds it); a 400 naming another
    parameter is every request's, since they all share it."""
    with contextlib.suppress(msgspec.DecodeError):
        decoded = _decode_error(body)
        error = decoded.get("error") if isinstance(decoded, dict) else None
        if isinstance(error, dict):
            param = error.get("param")
            return param is None or (isinstance(param, str) and param.startswith("input"))
    return True
