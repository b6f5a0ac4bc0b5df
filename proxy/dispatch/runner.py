"""The task behind a flight: one upstream call whose answer every waiter shares and which is
stored once when whole (docs/design.md §4).

The runner is built once at start-up with what a flight needs (the store, the flight table,
the cross-replica peers and the guarded upstream) and launches each flight in its own task, so
a client that leaves never cancels what other waiters share.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import aiohttp
import msgspec
from multidict import CIMultiDict

from proxy.cache.entry import decode_response
from proxy.cache.formats import format_of
from proxy.cache.messages_stream import MESSAGE, error_event
from proxy.cache.store import CacheStore
from proxy.cache.streams import Fed
from proxy.dispatch.call import UpstreamCall, entry_usage, store_answer
from proxy.dispatch.flight import Answer, Event, Flight, FlightTable
from proxy.dispatch.peers import PeerFlights
from proxy.errors import anthropic_error_body, error_body
from proxy.failures import ClientGone, Failure, UpstreamError, UpstreamTimeout
from proxy.sse import SseParser, format_event
from proxy.upstream.client import read_body
from proxy.upstream.flex import FLEX, RETRY_AT_STANDARD, FlexLane, answer_tier
from proxy.upstream.guarded import Exchange, GuardedUpstream, UpstreamFailure, UpstreamRequest

log = logging.getLogger("sidecache.flight")
# How often a call nobody else shares checks that its client is still there (aiohttp does not
# cancel a handler whose client left, and a silent upstream gives the relay nothing to check on).
ABANDON_POLL_S = 0.1
_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode
JSON_HEADERS = {"Content-Type": "application/json"}

# How a flight gets its answer once it may call the upstream: `FlightRunner.call_upstream` by
# default, a share of a micro-batch for batched endpoints.
Sender = Callable[[Flight, UpstreamCall], Awaitable[Answer]]
T = TypeVar("T")


class FlightRunner:
    def __init__(
        self,
        store: CacheStore,
        flights: FlightTable,
        upstream: GuardedUpstream,
        peers: PeerFlights | None,
        flex: FlexLane | None = None,
    ) -> None:
        self.store = store
        self.flights = flights
        self.upstream = upstream
        self._peers = peers
        self._flex = flex  # UPSTREAM_FLEX=on

    def launch(self, flight: Flight, call: UpstreamCall, send: Sender | None = None) -> None:
        """Starts the flight's task: it outlives any one client, so a client that leaves never
        cancels what other waiters share."""
        task = self._run(flight, call, send or self.call_upstream)
        flight.task = asyncio.create_task(task, name=f"flight-{flight.key}")

    async def close(self, timeout_s: float = 5) -> None:
        """Lets the flights under way land (and be stored), for a bounded time."""
        tasks = [f.task for f in list(self.flights.flights.values()) if f.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=timeout_s)

    async def _run(self, flight: Flight, call: UpstreamCall, send: Sender) -> None:
        try:
            answer = await self._lead_or_follow_peer(flight, call, send)
        except Failure as exc:  # ClientGone included: nobody is left to read it
            answer = Answer.of_failure(exc)
        except Exception:
            log.exception("flight to %s failed unexpectedly", call.request.endpoint)
            answer = Answer.of_failure(UpstreamError("The sidecar failed calling the upstream."))
        finally:
            self.flights.land(flight)
        flight.finish(answer)

    async def _lead_or_follow_peer(
        self, flight: Flight, call: UpstreamCall, send: Sender
    ) -> Answer:
        """With peers (Redis), only one replica calls upstream for a key; the others read the
        entry it stores. Without, this process's single-flight is all there is."""
        peers = self._peers
        lease = None
        if peers is not None and call.coalesce and call.plan is not None:
            lease = await peers.try_lead(call.plan.key)
            if lease is None:  # another replica calls the upstream: wait for its entry
                with self.upstream.tracer.span("sidecache.peer_wait") as span:
                    raw = await peers.await_peer(call.plan.key)
                    if span is not None:  # traced
                        span.set_attribute("sidecache.peer.entry", raw is not None)
                entry = decode_response(raw) if raw is not None else None
                if entry is not None:
                    usage = entry_usage(entry)
                    headers = CIMultiDict(JSON_HEADERS)
                    return Answer(200, headers, entry.body, from_peer=True, usage=usage)
                lease = await peers.try_lead(call.plan.key)
        try:
            return await send(flight, call)
        finally:
            if lease is not None and peers is not None:
                await peers.release(lease)

    async def call_upstream(self, flight: Flight, call: UpstreamCall) -> Answer:
        """The flight's own upstream call; the answer stored when it is whole and successful.
        Flex work (proxy/upstream/flex.py) goes at the flex tier first and, after a 429 or a
        timeout there that no client has seen any of, once more as the client asked: one
        flight, one answer, so budgets and the ledger count it once."""
        flex = self._flex.at_flex(call.request) if self._flex is not None else None
        if flex is not None:
            try:
                answer = await self._call(flight, call, flex)
            except UpstreamTimeout:
                if flight.head.done():
                    raise  # a stream already reached its clients: it cannot start again
                log.info("flex call to %s timed out; retrying at the standard tier", flex.endpoint)
                self.upstream.tracer.event("sidecache.retry", {"reason": "flex timeout"})
            else:
                if answer.status not in RETRY_AT_STANDARD:
                    answer.service_tier = answer.service_tier or FLEX
                    return answer
                log.info(
                    "flex call to %s got %d; retrying at the standard tier",
                    flex.endpoint,
                    answer.status,
                )
                reason = f"flex {answer.status}"
                self.upstream.tracer.event("sidecache.retry", {"reason": reason})
        return await self._call(flight, call, call.request)

    async def _call(self, flight: Flight, call: UpstreamCall, request: UpstreamRequest) -> Answer:
        async def read(response: aiohttp.ClientResponse, exchange: Exchange) -> Answer | None:
            answer = await self._read_or_relay(flight, call, response, exchange)
            if answer is not None:
                answer.upstream_ms = exchange.elapsed_ms()
            return answer

        answer = await self._unless_abandoned(
            flight, call, self.upstream.call_with(request, flight.wanted, read)
        )
        if answer is None:
            # Raised outside the breaker: everyone leaving a healthy stream is no upstream failure.
            raise ClientGone()
        if answer.status == 200:
            answer.service_tier = answer_tier(answer.body)
            if not answer.streamed:
                answer.usage = call.validate(answer.body)
                answer.stored = await store_answer(
                    self.store, call, answer.body, answer.usage, answer.service_tier
                )
        return answer

    async def _unless_abandoned(
        self, flight: Flight, call: UpstreamCall, calling: Awaitable[T]
    ) -> T:
        """Runs the upstream call; one with nothing to store (no-store) is cancelled as soon as
        no client waits for it any more, so an upstream that sends nothing does not hold a gate
        slot and a connection for nobody until the total deadline. A call the cache wants (a
        plan) or that other waiters share is never cancelled here: `flight.wanted()` asks
        every waiter, and a plan keeps it running for the cache."""
        if call.plan is not None:
            return await calling
        task = asyncio.ensure_future(calling)
        try:
            while True:
                done, _ = await asyncio.wait((task,), timeout=ABANDON_POLL_S)
                if done:
                    return task.result()
                if not flight.wanted():
                    task.cancel()
                    await asyncio.gather(task, return_exceptions=True)
                    raise ClientGone()
        finally:
            if not task.done():  # this flight's own task was cancelled
                task.cancel()

    async def _read_or_relay(
        self,
        flight: Flight,
        call: UpstreamCall,
        upstream: aiohttp.ClientResponse,
        exchange: Exchange,
    ) -> Answer | None:
        """The whole answer, or a live stream relayed to the flight; None when a stream lost
        every reader."""
        if call.stream and upstream.status == 200 and upstream.content_type == "text/event-stream":
            return await self._relay_stream(flight, call, upstream, exchange.relayed)
        return Answer(upstream.status, exchange.relayed, await read_body(upstream))

    async def _relay_stream(
        self,
        flight: Flight,
        call: UpstreamCall,
        upstream: aiohttp.ClientResponse,
        relayed: CIMultiDict[str],
    ) -> Answer | None:
        """Pushes each SSE event to the flight as it arrives; assembles and stores the whole.
        None when nobody reads it any more and nothing is to be stored (the upstream is
        closed). A stream that breaks counts against the breaker."""
        flight.start_stream(relayed)
        parser = SseParser()
        assembly = format_of(call.kind).assembly()
        done = False
        try:
            async for data in upstream.content.iter_any():
                for event in parser.feed(data):
                    fed = Fed.PART if event.data is None else assembly.feed(event.data)
                    done = done or fed is Fed.DONE
                    flight.push(Event(event.raw, fed is Fed.USAGE_ONLY))
                if call.plan is None and not flight.wanted():
                    upstream.close()  # nobody to answer and nothing to store: stop paying
                    return None
        except (TimeoutError, aiohttp.ClientError) as exc:
            upstream.close()
            failed = stream_failure(
                f"The upstream stream failed ({type(exc).__name__}).", call.kind
            )
            flight.push(Event(failure_event(call.kind, failed.body)))
            raise UpstreamFailure(failed) from None
        except asyncio.CancelledError:
            # The total deadline (UpstreamTimeout once it leaves the guard) or every client
            # gone: the followers' last event says the stream ended unfinished.
            upstream.close()
            failed = stream_failure("The upstream stream did not end in time.", call.kind)
            flight.push(Event(failure_event(call.kind, failed.body)))
            raise
        whole = assembly.whole()
        if whole is None:
            upstream.close()
            failed = stream_failure("The upstream stream ended before it was complete.", call.kind)
            if not done:
                flight.push(Event(failure_event(call.kind, failed.body)))
            raise UpstreamFailure(failed)
        upstream.release()
        body = _encode(whole)
        usage = call.validate(body)
        answer = Answer(200, CIMultiDict(JSON_HEADERS), body, streamed=True, usage=usage)
        answer.stored = await store_answer(self.store, call, body, usage, answer_tier(body))
        return answer


def stream_failure(message: str, kind: str = "") -> Answer:
    """A stream that broke after it started: followers get this as their last SSE event, the
    others this 502 (the upstream's answer was not an answer), in the stream's own shape
    (Anthropic's for Messages)."""
    if kind == MESSAGE:
        body = anthropic_error_body(502, message)
    else:
        body = error_body(502, message, code="upstream_stream_failed")
    return Answer(502, CIMultiDict(JSON_HEADERS), body)


def failure_event(kind: str, body: bytes) -> bytes:
    """A stream failure's SSE event: Messages' `event: error`, else a `data:` event."""
    return error_event(body) if kind == MESSAGE else format_event(body)
