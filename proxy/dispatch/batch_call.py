"""A micro-batch and its one upstream call (proxy/dispatch/batcher.py collects the requests):
the call carries the inputs of the requests still waiting when its turn comes, a 400 that
blames the input is bisected until the offending request fails alone, and every request gets
back its own piece: a `Share` of a 200, the upstream's error `Answer`, or a `Failure` raised.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

import msgspec
from multidict import CIMultiDict

from proxy.dispatch.batch_shapes import BatchKey, BatchKind, Share, blames_input
from proxy.dispatch.flight import Answer
from proxy.failures import BadUpstreamAnswer, ClientGone, Failure, UpstreamError
from proxy.upstream.exchange import UpstreamRequest
from proxy.upstream.gate import Priority, Wanted
from proxy.upstream.guarded import GuardedUpstream
from proxy.vectors import apportion

log = logging.getLogger("sidecache.batcher")
_encode = msgspec.json.Encoder(order="sorted").encode


@dataclass(slots=True)
class Waiter:
    future: asyncio.Future[Share | Answer]
    wanted: Wanted
    priority: Priority


@dataclass(slots=True)
class Slot:
    """One distinct input of a batch and the requests waiting for it."""

    item: Any
    bound: int
    waiters: list[Waiter]


@dataclass(slots=True)
class Batch:
    key: BatchKey
    kind: BatchKind
    params: dict[str, Any]
    headers: CIMultiDict[str]
    slots: dict[bytes, Slot] = field(default_factory=dict)
    bound: int = 0
    opened: float = 0.0  # loop time of its first request
    due: float = 0.0  # when it goes unless more requests keep it open (loop time)
    timer: asyncio.Handle | None = None
    sent: bool = False


async def run_batch(upstream: GuardedUpstream, batch: Batch) -> None:
    """Sends `batch` and answers every request in it, whatever happens."""
    slots = list(batch.slots.values())
    try:
        await _send(upstream, batch, slots)
    except Exception:
        log.exception("a batched %s call failed unexpectedly", batch.kind.endpoint)
    finally:  # whatever happened, nobody is left waiting
        _fail(slots, UpstreamError("The sidecar failed calling the upstream."))


async def _send(upstream: GuardedUpstream, batch: Batch, slots: list[Slot]) -> None:
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
        reply = await upstream.call(request, lambda: _wanted(slots))
    except Failure as exc:  # breaker open, timeout, unreachable, everyone gone
        _fail(slots, exc)
        return
    answer = Answer(reply.status, reply.headers, reply.body)
    if answer.status == 200:
        _deliver(batch, slots, answer)
    elif answer.status == 400 and len(slots) > 1 and blames_input(answer.body):
        half = len(slots) // 2
        await asyncio.gather(
            _send(upstream, batch, slots[:half]), _send(upstream, batch, slots[half:])
        )
    else:
        _settle(slots, answer)


def _deliver(batch: Batch, slots: list[Slot], answer: Answer) -> None:
    try:
        split = batch.kind.split(answer.body, len(slots))
    except ValueError as exc:
        _fail(slots, BadUpstreamAnswer(f"The upstream API sent {exc}."))
        return
    requests = sum(len(s.waiters) for s in slots)
    total = split.prompt_tokens or 0
    # By length, as the per-item cache splits a call's usage (vectors.apportion).
    weights = [len(s.item) for s in slots]
    for slot, part, item_tokens in zip(slots, split.parts, apportion(total, weights), strict=True):
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


def _live(slots: list[Slot]) -> list[Slot]:
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


def _wanted(slots: list[Slot]) -> bool:
    return any(not w.future.done() and w.wanted() for s in slots for w in s.waiters)


def _settle(slots: list[Slot], answer: Answer) -> None:
    for slot in slots:
        for waiter in slot.waiters:
            if not waiter.future.done():
                waiter.future.set_result(answer)


def _fail(slots: list[Slot], failure: Failure) -> None:
    for slot in slots:
        for waiter in slot.waiters:
            if not waiter.future.done():
                waiter.future.set_exception(failure)
