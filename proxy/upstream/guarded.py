"""The one place a request meets the upstream: the priority gate, the endpoint's circuit
breaker, timing, metrics and failure accounting, in that order, for every understood call
(flights, micro-batches, embedding fetches). Retries, fallbacks and tracing belong here.

A call waits for a gate slot (an open breaker refuses before it queues, a slot not free in time
is UpstreamBusy), then sends inside the breaker: timeouts and connection errors count against
it; 5xx answers count when more than one tenant sees them (breakers.py: one client's request
shape must not open the breaker for everyone); 4xx answers do not. The whole call, answer body
and relayed stream included, runs under one total deadline (`total_timeout_s`,
UPSTREAM_TOTAL_TIMEOUT -> UpstreamTimeout), so no upstream that trickles bytes holds a slot
beyond it; a call cancelled or timed out closes its upstream connection. What
the caller does with the answer (read it whole, relay a stream) is a `Reader` run inside the
breaker too, so a stream that breaks counts; writes to clients never happen in a reader (a
flight buffers the events its clients read).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from typing import Generic, TypeVar, cast

import aiohttp
from multidict import CIMultiDict

from proxy.failures import UpstreamTimeout
from proxy.metrics import Metrics
from proxy.tracing import Tracer, Untraced
from proxy.upstream.breakers import Breaker, BreakerBoard
from proxy.upstream.client import UpstreamClient, read_body
from proxy.upstream.gate import Priority, UpstreamGate, Wanted
from proxy.upstream.headers import client_response_headers

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class UpstreamRequest:
    """A POST to the upstream. `body` may be a function that makes it when the call's turn
    comes (a micro-batch leaves out the clients that left while it waited); it raises
    ClientGone when nobody is left to send it for."""

    endpoint: str
    path: str
    headers: Mapping[str, str]
    body: bytes | Callable[[], bytes]
    priority: Priority
    # Whose call it is, for the breaker's 5xx accounting; None: counted as shared (a batch).
    tenant: str | None = None


@dataclass(frozen=True, slots=True)
class Exchange:
    """What a reader knows of the call besides the response."""

    relayed: CIMultiDict[str]  # the response's headers fit for the client
    started: float  # perf_counter when the request was sent

    def elapsed_ms(self) -> float:
        return (time.perf_counter() - self.started) * 1000


@dataclass(frozen=True, slots=True)
class Reply:
    """The upstream's whole answer, whatever its status."""

    status: int
    headers: CIMultiDict[str]
    body: bytes
    upstream_ms: float


Reader = Callable[[aiohttp.ClientResponse, Exchange], Awaitable[T]]


class UpstreamFailure(Exception, Generic[T]):
    """Raised by a reader (and for every 5xx) to count the call against the breaker while still
    giving `result` to the caller: an upstream's error answer is relayed, not raised."""

    def __init__(self, result: T) -> None:
        super().__init__("the upstream call failed")
        self.result = result


async def read_reply(response: aiohttp.ClientResponse, exchange: Exchange) -> Reply:
    body = await read_body(response)
    return Reply(response.status, exchange.relayed, body, exchange.elapsed_ms())


class GuardedUpstream:
    def __init__(
        self,
        client: UpstreamClient,
        gate: UpstreamGate,
        breakers: BreakerBoard,
        metrics: Metrics,
        total_timeout_s: float = 600.0,
        *,
        tracer: Tracer | None = None,
    ) -> None:
        self.client = client
        self.tracer = tracer or Untraced()
        self.gate = gate
        self.breakers = breakers
        self.metrics = metrics
        self.total_timeout_s = total_timeout_s

    async def call(self, request: UpstreamRequest, wanted: Wanted) -> Reply:
        """The upstream's whole answer. Raises UpstreamTimeout, UpstreamUnreachable,
        BreakerOpen, UpstreamBusy, or ClientGone when every client left while the call waited
        its turn."""
        return await self.call_with(request, wanted, read_reply)

    async def call_with(self, request: UpstreamRequest, wanted: Wanted, read: Reader[T]) -> T:
        """Like `call`, with `read` making the result of the answer; a 5xx counts against the
        breaker after `read` ran."""
        if self.tracer.on:
            return await self._traced(request, wanted, read)
        return await self._guarded(request, wanted, read)

    async def _traced(self, request: UpstreamRequest, wanted: Wanted, read: Reader[T]) -> T:
        """The call as span `sidecache.upstream` (its queue wait a child span), whose context
        goes upstream as `traceparent`."""
        attributes = {"sidecache.endpoint": request.endpoint, "url.path": request.path}
        with self.tracer.span("sidecache.upstream", attributes, client=True):
            headers = self.tracer.inject(request.headers)
            return await self._guarded(replace(request, headers=headers), wanted, read)

    async def _guarded(self, request: UpstreamRequest, wanted: Wanted, read: Reader[T]) -> T:
        breaker = self.breakers.for_endpoint(request.endpoint)
        breaker.admit()  # refuses at once rather than after waiting for a slot
        async with self.gate.slot(request.priority, wanted):
            body = request.body if isinstance(request.body, bytes) else request.body()
            breaker.saw_call(request.tenant)
            try:
                with breaker.guard():
                    return await self._send(request, body, read, breaker)
            except UpstreamFailure as failure:
                return cast(T, failure.result)

    async def _send(
        self, request: UpstreamRequest, body: bytes, read: Reader[T], breaker: Breaker
    ) -> T:
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.total_timeout_s):
                response = await self.client.send("POST", request.path, request.headers, body)
                self.metrics.observe_upstream(
                    request.endpoint, response.status, time.perf_counter() - started
                )
                relayed = client_response_headers(response.headers, decoded=True)
                try:
                    result = await read(response, Exchange(relayed, started))
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
