"""One try of a call on one upstream (proxy/upstream/guarded.py walks the model's chain and
retries): the breaker admits it, it waits for a gate slot, then sends inside the breaker under
the call's total deadline, timed and counted in the metrics.

An answer that is not handed to the reader (one to retry on the same upstream, or to move on
from to the next one) is read away and returned as `Again`; a 5xx among them still counts
against the breaker when more than one tenant sees it (breakers.py). An answer handed to the
reader carries the relayed headers `X-Upstream` (and `X-Fallback-From` when it fell back).
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass
from typing import TypeVar, cast

import aiohttp

from proxy.failures import UpstreamTimeout
from proxy.metrics import Metrics
from proxy.upstream.breakers import Breaker, BreakerBoard
from proxy.upstream.client import read_body
from proxy.upstream.exchange import Exchange, Reader, UpstreamFailure, UpstreamRequest
from proxy.upstream.gate import Wanted
from proxy.upstream.headers import FALLBACK_HEADER, UPSTREAM_HEADER, client_response_headers
from proxy.upstream.lanes import Lane, RequestBody
from proxy.upstream.retries import MOVE_STATUSES, RETRY_STATUSES, backoff_s, retry_after_s
from proxy.upstream.routes import Target

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Again:
    """An answer not handed to the reader: the call is retried or moves on."""

    status: int
    wait_s: float | None  # the back-off before a retry on the same upstream; None: move on


@dataclass(frozen=True, slots=True)
class Step:
    """A chain's step as a call makes it: the model asked for there, and whose call it was."""

    target: Target
    requested: str | None
    fallback_from: str | None

    @property
    def served_model(self) -> str | None:
        return self.target.model or self.requested


class _Counted(Exception):
    """Raised inside the breaker for a 5xx that counts against it, then unwrapped."""

    def __init__(self, again: Again) -> None:
        super().__init__("the upstream answered 5xx")
        self.again = again


def fits(wait_s: float, deadline: float) -> bool:
    """Whether waiting `wait_s` still leaves time before the call's deadline (loop time)."""
    return asyncio.get_running_loop().time() + wait_s < deadline


class Attempts:
    """Single tries of calls, each on one upstream: the guarded upstream's own breakers,
    metrics and back-off randomness (for the wait a retry answer asks for)."""

    def __init__(self, breakers: BreakerBoard, metrics: Metrics, rng: random.Random) -> None:
        self.breakers = breakers
        self.metrics = metrics
        self._rng = rng

    async def attempt(
        self,
        request: UpstreamRequest,
        lane: Lane,
        step: Step,
        body: RequestBody,
        wanted: Wanted,
        read: Reader[T],
        deadline: float,
        attempt: int | None,
        last: bool,
    ) -> T | Again:
        """One try on `lane`; `attempt` is None when no retry is left, `last` when the chain
        has no step after this one."""
        breaker = self.breakers.for_endpoint(request.endpoint, lane.name)
        breaker.admit()  # refuses at once rather than after waiting for a slot
        async with lane.gate.slot(request.priority, wanted):
            sent = body.for_model(step.target.model)
            breaker.saw_call(request.tenant)
            try:
                with breaker.guard():
                    return await self._send(
                        request, lane, step, sent, read, breaker, deadline, attempt, last
                    )
            except UpstreamFailure as failure:
                return cast(T, failure.result)
            except _Counted as counted:
                return counted.again

    def _again(
        self,
        response: aiohttp.ClientResponse,
        breaker: Breaker,
        deadline: float,
        attempt: int | None,
        last: bool,
    ) -> Again | None:
        """What to do instead of reading this answer: retry (`wait_s`), move on, or neither.
        No retry when this failure opens the breaker: the client gets the answer instead."""
        status = response.status
        if attempt is not None and status in RETRY_STATUSES and not breaker.near_open():
            wait = backoff_s(attempt, retry_after_s(response.headers), self._rng)
            if fits(wait, deadline):
                return Again(status, wait)
        if not last and status in MOVE_STATUSES:
            return Again(status, None)
        return None

    async def _send(
        self,
        request: UpstreamRequest,
        lane: Lane,
        step: Step,
        body: bytes,
        read: Reader[T],
        breaker: Breaker,
        deadline: float,
        attempt: int | None,
        last: bool,
    ) -> T | Again:
        started = time.perf_counter()
        headers = lane.headers(request.headers)
        try:
            async with asyncio.timeout_at(deadline):
                response = await lane.client.send(
                    "POST", request.path, headers, body, model=step.served_model
                )
                self.metrics.observe_upstream(
                    request.endpoint, response.status, time.perf_counter() - started
                )
                again = self._again(response, breaker, deadline, attempt, last)
                if again is not None:
                    await read_body(response)  # keeps the connection for the next call
                    if response.status >= 500 and breaker.counts_5xx(request.tenant):
                        raise _Counted(again)
                    return again
                relayed = client_response_headers(response.headers, decoded=True)
                relayed[UPSTREAM_HEADER] = lane.name
                if step.fallback_from is not None:
                    relayed[FALLBACK_HEADER] = step.fallback_from
                exchange = Exchange(
                    relayed, started, lane.name, step.served_model, step.fallback_from
                )
                try:
                    result = await read(response, exchange)
                except BaseException:
                    response.close()  # cancelled or timed out mid-body: stop the upstream too
                    raise
        except UpstreamTimeout:
            raise
        except TimeoutError as exc:  # the total deadline
            raise UpstreamTimeout() from exc
        if response.status >= 500 and breaker.counts_5xx(request.tenant):
            raise UpstreamFailure(result)
        return result
