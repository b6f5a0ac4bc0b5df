"""The task behind a flight: one upstream call, through the gate and the breaker, whose answer
every waiter shares and which is stored once when whole."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import msgspec
from multidict import CIMultiDict

from proxy.cache.entry import decode_response
from proxy.cache.replay import assemble
from proxy.dispatch.call import UpstreamCall, store_answer
from proxy.dispatch.flight import Answer, Event, Flight
from proxy.dispatch.gate import Abandoned
from proxy.errors import ApiError, error_body
from proxy.runtime import Runtime
from proxy.sse import SseParser, format_event
from proxy.upstream.breakers import UpstreamFailure
from proxy.upstream.client import read_body
from proxy.upstream.headers import client_response_headers
from proxy.wire import PromptTokensDetails, Usage

log = logging.getLogger("sidecache.flight")
_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode
JSON_HEADERS = {"Content-Type": "application/json"}


# How a flight gets its answer once it may call the upstream: `call_upstream` by default,
# a share of a micro-batch for batched endpoints.
Sender = Callable[[Runtime, Flight, UpstreamCall], Awaitable[Answer]]


def launch(
    runtime: Runtime, flight: Flight, call: UpstreamCall, send: Sender | None = None
) -> None:
    """Starts the flight's task: it outlives any one client, so a client that leaves never
    cancels what other waiters share."""
    task = _fly(runtime, flight, call, send or call_upstream)
    flight.task = asyncio.create_task(task, name=f"flight-{flight.key}")


async def _fly(runtime: Runtime, flight: Flight, call: UpstreamCall, send: Sender) -> None:
    try:
        answer = await _coordinated(runtime, flight, call, send)
    except ApiError as exc:  # Abandoned included: nobody is left to read it
        answer = error_answer(exc)
    except Exception:
        log.exception("flight to %s failed unexpectedly", call.endpoint)
        answer = error_answer(ApiError(502, "The sidecar failed calling the upstream."))
    finally:
        runtime.flights.land(flight)
    flight.finish(answer)


async def _coordinated(
    runtime: Runtime, flight: Flight, call: UpstreamCall, send: Sender
) -> Answer:
    """With peers (Redis), only one replica calls upstream for a key; the others read the entry
    it stores. Without, this process's single-flight is all there is."""
    peers = runtime.peers
    lease = None
    if peers is not None and call.coalesce and call.plan is not None:
        lease = await peers.try_lead(call.plan.key)
        if lease is None:
            raw = await peers.await_peer(call.plan.key)
            entry = decode_response(raw) if raw is not None else None
            if entry is not None:
                usage = Usage(
                    prompt_tokens=entry.prompt_tokens,
                    completion_tokens=entry.completion_tokens,
                    prompt_tokens_details=PromptTokensDetails(entry.cached_tokens),
                )
                headers = CIMultiDict(JSON_HEADERS)
                return Answer(200, headers, entry.body, from_peer=True, usage=usage)
            lease = await peers.try_lead(call.plan.key)
    try:
        return await send(runtime, flight, call)
    finally:
        if lease is not None and peers is not None:
            await peers.release(lease)


async def call_upstream(runtime: Runtime, flight: Flight, call: UpstreamCall) -> Answer:
    """The flight's own upstream call: an open breaker refuses before the gate is queued for."""
    runtime.breakers.for_endpoint(call.endpoint).admit()
    async with runtime.gate.slot(call.priority, flight.wanted):
        return await _call_upstream(runtime, flight, call)


async def _call_upstream(runtime: Runtime, flight: Flight, call: UpstreamCall) -> Answer:
    breaker = runtime.breakers.for_endpoint(call.endpoint)
    started = time.perf_counter()
    try:
        with breaker.guard():
            answer = await _guarded(runtime, flight, call)
            if answer is not None:
                answer.upstream_ms = (time.perf_counter() - started) * 1000
    except UpstreamFailure as failure:
        assert isinstance(failure.payload, Answer)
        return failure.payload
    if answer is None:
        # Raised outside the breaker: everyone leaving a healthy stream is no upstream failure.
        raise Abandoned()
    if answer.status == 200 and not answer.streamed:
        answer.usage = call.validate(answer.body)
        answer.stored = await store_answer(runtime.store, call, answer.body, answer.usage)
    return answer


async def _guarded(runtime: Runtime, flight: Flight, call: UpstreamCall) -> Answer | None:
    """The upstream call itself, inside the breaker; None when a stream lost every reader."""
    started = time.perf_counter()
    upstream = await runtime.upstream.send("POST", call.path, call.headers, call.body)
    elapsed = time.perf_counter() - started
    runtime.metrics.observe_upstream(call.endpoint, upstream.status, elapsed)
    relayed = client_response_headers(upstream.headers, decoded=True)
    if upstream.status >= 500:
        answer = Answer(upstream.status, relayed, await read_body(upstream))
        raise UpstreamFailure(upstream.status, answer)
    if call.stream and upstream.status == 200 and upstream.content_type == "text/event-stream":
        return await _relay_stream(runtime, flight, call, upstream, relayed)
    return Answer(upstream.status, relayed, await read_body(upstream))


async def _relay_stream(
    runtime: Runtime,
    flight: Flight,
    call: UpstreamCall,
    upstream: aiohttp.ClientResponse,
    relayed: CIMultiDict[str],
) -> Answer | None:
    """Pushes each SSE event to the flight as it arrives; assembles and stores the whole.
    None when nobody reads it any more and nothing is to be stored (the upstream is closed)."""
    flight.start_stream(relayed)
    parser = SseParser()
    chunks: list[dict[str, Any]] = []
    done = broken = False
    try:
        async for data in upstream.content.iter_any():
            for event in parser.feed(data):
                usage_only = False
                if event.data == b"[DONE]":
                    done = True
                elif event.data is not None:
                    chunk = _chunk(event.data)
                    if chunk is None:
                        broken = True
                    else:
                        chunks.append(chunk)
                        usage_only = not chunk.get("choices") and bool(chunk.get("usage"))
                flight.push(Event(event.raw, usage_only))
            if call.plan is None and not flight.wanted():
                upstream.close()  # nobody to answer and nothing to store: stop paying
                return None
    except (TimeoutError, aiohttp.ClientError) as exc:
        upstream.close()
        failed = stream_failure(f"The upstream stream failed ({type(exc).__name__}).")
        flight.push(Event(format_event(failed.body)))
        raise UpstreamFailure(502, failed) from None
    if not done or broken or not chunks:
        upstream.close()
        failed = stream_failure("The upstream stream ended before it was complete.")
        if not done:
            flight.push(Event(format_event(failed.body)))
        raise UpstreamFailure(502, failed)
    upstream.release()
    body = _encode(assemble(chunks, call.kind))
    usage = call.validate(body)
    answer = Answer(200, CIMultiDict(JSON_HEADERS), body, streamed=True, usage=usage)
    answer.stored = await store_answer(runtime.store, call, body, usage)
    return answer


def _chunk(data: bytes) -> dict[str, Any] | None:
    try:
        chunk = _decode(data)
    except msgspec.DecodeError:
        return None
    return chunk if isinstance(chunk, dict) and "error" not in chunk else None


def error_answer(exc: ApiError) -> Answer:
    body = error_body(exc.status, exc.message, param=exc.param, code=exc.code)
    return Answer(exc.status, CIMultiDict({**JSON_HEADERS, **exc.headers}), body)


def stream_failure(message: str) -> Answer:
    body = error_body(502, message, code="upstream_stream_failed")
    return Answer(502, CIMultiDict(JSON_HEADERS), body)
