"""Answering a client from a flight: live SSE from the first event, or the whole answer as
JSON (or replayed as SSE when the flight was not streamed)."""

from __future__ import annotations

import asyncio
import time
from functools import partial

from aiohttp import web
from multidict import CIMultiDict

from proxy.accounting import FIRST_EVENT
from proxy.dispatch.flight import Answer, Flight, StreamHead
from proxy.handlers.answers import SSE_HEADERS, cache_headers, write_replay
from proxy.handlers.parse import ParsedRequest, client_connected
from proxy.keys import CacheKey
from proxy.runtime import Runtime
from proxy.vocabulary import CacheStatus


def flight_for(runtime: Runtime, parsed: ParsedRequest, key: CacheKey) -> tuple[Flight, bool]:
    """Requests that may read the cache share flights; one that must not (no-cache, no-store)
    wants an answer of its own, so it flies alone."""
    if parsed.directives.read:
        return runtime.flights.join(key.digest)
    return Flight(key.digest), True


async def respond(
    request: web.Request,
    flight: Flight,
    key: CacheKey,
    label: CacheStatus,
    *,
    stream: bool = False,
    include_usage: bool = False,
) -> web.StreamResponse:
    """`label` is MISS/BYPASS for the client whose miss started the flight, COALESCED for the
    others. Waiting never cancels the flight: it belongs to every waiter. A flight that failed
    raises its Failure here, for the error middleware to answer."""
    watcher = partial(client_connected, request)
    flight.watchers.append(watcher)
    try:
        head = await asyncio.shield(flight.head)
        if isinstance(head, StreamHead):
            if stream:
                return await _follow(
                    request, flight, head, cache_headers(label, key), include_usage
                )
            head = await asyncio.shield(flight.result)
        return await _whole(request, head, key, label, stream, include_usage)
    finally:
        flight.watchers.remove(watcher)


async def _whole(
    request: web.Request,
    answer: Answer,
    key: CacheKey,
    label: CacheStatus,
    stream: bool,
    include_usage: bool,
) -> web.StreamResponse:
    if answer.failure is not None:
        raise answer.failure
    headers = cache_headers(CacheStatus.COALESCED if answer.from_peer else label, key)
    if stream and answer.status == 200:
        return await write_replay(request, answer.body, include_usage, headers)
    relayed = CIMultiDict(answer.headers)
    relayed.update(headers)
    return web.Response(status=answer.status, body=answer.body, headers=relayed)


async def _follow(
    request: web.Request,
    flight: Flight,
    head: StreamHead,
    headers: dict[str, str],
    include_usage: bool,
) -> web.StreamResponse:
    relayed = CIMultiDict(head.headers)
    relayed.update(SSE_HEADERS)
    relayed.update(headers)
    response = web.StreamResponse(headers=relayed)
    await response.prepare(request)
    first = True
    try:
        async for event in flight.follow():
            if event.usage_only and not include_usage:
                continue
            await response.write(event.raw)
            if first:
                request[FIRST_EVENT] = time.perf_counter()
                first = False
        await response.write_eof()
    except ConnectionResetError:
        pass  # this client left; the flight goes on for the others (and the cache)
    return response
