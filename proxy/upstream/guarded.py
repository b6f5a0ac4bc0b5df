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

Routing (proxy/upstream/routes.py): a call goes to its model's upstream, each upstream with its
own client base URL, gate (its own max_in_flight, else the shared one), breakers and
credential (a `Lane`). Connection errors and 502/503/504 are retried on the same upstream
(proxy/upstream/retries.py); a call still failing there (breaker open, 5xx, 429, timeout,
connection error) moves to the next upstream of its model's fallback chain. Both happen only
before the answer is handed to the reader, so nothing of a failed try ever reached a client
and a stream is never tried again once relayed. The answer's relayed headers say
`X-Upstream` (and `X-Fallback-From` when it fell back).

This module walks the chain and retries; one try on one upstream (breaker, gate slot, send
under the deadline, what to do with the answer) is proxy/upstream/attempt.py.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Mapping
from dataclasses import replace
from typing import TypeVar

from proxy.failures import BreakerOpen, InvalidRequest, UpstreamTimeout, UpstreamUnreachable
from proxy.metrics import Metrics
from proxy.tracing import Tracer, Untraced
from proxy.upstream.attempt import Again, Attempts, Step, fits
from proxy.upstream.breakers import BreakerBoard
from proxy.upstream.client import UpstreamClient
from proxy.upstream.exchange import Reader, Reply, UpstreamRequest, read_reply
from proxy.upstream.gate import UpstreamGate, Wanted
from proxy.upstream.lanes import Lane, RequestBody
from proxy.upstream.retries import RouteStats, backoff_s
from proxy.upstream.routes import DEFAULT, Route, RouteTable, Target

T = TypeVar("T")
_MOVE = (BreakerOpen, UpstreamTimeout, UpstreamUnreachable)  # failures a fallback may follow


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
        routes: RouteTable | None = None,
        lanes: Mapping[str, Lane] | None = None,
        retries: int = 0,
        rng: random.Random | None = None,
    ) -> None:
        """Without `routes`, every call goes to `client` as upstream `default`."""
        self.client = client
        self.tracer = tracer or Untraced()
        self.gate = gate
        self.breakers = breakers
        self.metrics = metrics
        self.total_timeout_s = total_timeout_s
        self.routes = routes or RouteTable([Route(DEFAULT, "", ("*",))], {})
        self.lanes = dict(lanes or {DEFAULT: Lane(DEFAULT, client, gate)})
        self.retries = retries
        self.stats = RouteStats()
        self._rng = rng or random.Random()
        self._attempts = Attempts(breakers, metrics, self._rng)

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
        return await self._routed(request, wanted, read)

    async def _traced(self, request: UpstreamRequest, wanted: Wanted, read: Reader[T]) -> T:
        """The call as span `sidecache.upstream` (its queue wait a child span, retries and
        fallbacks its events), whose context goes upstream as `traceparent`."""
        attributes = {"sidecache.endpoint": request.endpoint, "url.path": request.path}
        with self.tracer.span("sidecache.upstream", attributes, client=True):
            headers = self.tracer.inject(request.headers)
            return await self._routed(replace(request, headers=headers), wanted, read)

    async def _routed(self, request: UpstreamRequest, wanted: Wanted, read: Reader[T]) -> T:
        """Down the model's chain: each upstream tried (and retried) in turn until one
        answers what is handed to the reader."""
        chain = self.routes.chain(request.model)
        if not chain:
            raise InvalidRequest(
                f"No upstream of this sidecar serves the model {request.model!r}.", param="model"
            )
        deadline = asyncio.get_running_loop().time() + self.total_timeout_s
        body = RequestBody(request.body)
        origin = chain[0].upstream
        for index, target in enumerate(chain):
            last = index == len(chain) - 1
            fell_back = None if target.upstream == origin else origin
            step = Step(target, request.model, fell_back)
            try:
                outcome = await self._on_lane(request, step, body, wanted, read, deadline, last)
            except _MOVE as exc:
                if last or asyncio.get_running_loop().time() >= deadline:
                    raise
                self._moved(target, chain[index + 1], type(exc).__name__)
                continue
            if isinstance(outcome, Again):
                self._moved(target, chain[index + 1], str(outcome.status))
                continue
            self.stats.served[target.upstream] += 1
            return outcome
        raise AssertionError("the last step of a chain never moves on")  # pragma: no cover

    def _moved(self, source: Target, to: Target, reason: str) -> None:
        self.stats.fallbacks[(source.upstream, to.upstream)] += 1
        self.metrics.observe_fallback(source.upstream, to.upstream)
        self.tracer.event(
            "sidecache.fallback", {"from": source.label(), "to": to.label(), "reason": reason}
        )

    async def _on_lane(
        self,
        request: UpstreamRequest,
        step: Step,
        body: RequestBody,
        wanted: Wanted,
        read: Reader[T],
        deadline: float,
        last: bool,
    ) -> T | Again:
        """One upstream's tries: retried while retries are left and the wait fits the deadline."""
        lane = self.lanes[step.target.upstream]
        attempt = 0
        while True:
            retry_left = attempt < self.retries
            try:
                outcome = await self._attempts.attempt(
                    request,
                    lane,
                    step,
                    body,
                    wanted,
                    read,
                    deadline,
                    attempt if retry_left else None,
                    last,
                )
            except UpstreamUnreachable:
                wait = backoff_s(attempt, None, self._rng)
                breaker = self.breakers.for_endpoint(request.endpoint, lane.name)
                if not retry_left or not fits(wait, deadline) or breaker.state != "closed":
                    raise  # (a breaker its own tries opened would only refuse the retry)
                outcome = Again(0, wait)
            if not isinstance(outcome, Again) or outcome.wait_s is None:
                return outcome
            attempt += 1
            self.stats.retries[lane.name] += 1
            self.metrics.observe_retry(lane.name)
            reason = str(outcome.status) if outcome.status else "connection error"
            self.tracer.event(
                "sidecache.retry", {"upstream": lane.name, "attempt": attempt, "reason": reason}
            )
            await asyncio.sleep(outcome.wait_s)
