"""A streamed miss: relayed to the client as it arrives, assembled and stored at the end.

The first byte is never held back for caching. The upstream is always asked for the usage
chunk (the ledger needs it); it is removed from the relay when the client did not ask. Only a
stream that ended with `[DONE]` and no error is stored. If the client leaves, the upstream read
goes on to the end so the answer that was paid for is cached (unless nothing is to be stored).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import aiohttp
import msgspec
from aiohttp import web

from proxy.cache.entry import encode_entry
from proxy.cache.replay import assemble
from proxy.errors import ErrorBody, ErrorDetail
from proxy.handlers.answers import SSE_HEADERS, StorePlan, stored_response
from proxy.handlers.common import Understood, cache_headers, miss_status
from proxy.keys import CacheKey
from proxy.runtime import Runtime
from proxy.sse import SseParser, format_event
from proxy.upstream.client import read_body
from proxy.upstream.headers import client_response_headers, upstream_request_headers
from proxy.wire import Usage

log = logging.getLogger("sidecache.stream")
_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode
_usage_from = msgspec.convert


async def relay_stream(
    request: web.Request,
    runtime: Runtime,
    u: Understood,
    kind: str,
    plan: StorePlan | None,
    key: CacheKey,
    include_usage: bool,
) -> web.StreamResponse:
    body = dict(u.body)
    body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
    headers = upstream_request_headers(
        request.headers, u.identity.upstream_authorization, keep_encoding=False
    )
    started = time.perf_counter()
    upstream = await runtime.upstream.send("POST", request.path, headers, _encode(body))
    runtime.metrics.observe_upstream(u.endpoint, upstream.status, time.perf_counter() - started)
    relayed = client_response_headers(upstream.headers, decoded=True)
    relayed.update(cache_headers(miss_status(u), key))
    if upstream.status != 200 or upstream.content_type != "text/event-stream":
        # An error (or a server that answered without streaming): relay it whole, store nothing.
        payload = await read_body(upstream)
        return web.Response(status=upstream.status, body=payload, headers=relayed)

    relayed.update(SSE_HEADERS)
    response = web.StreamResponse(headers=relayed)
    await response.prepare(request)
    relay = _Relay(response, include_usage)
    try:
        async for data in upstream.content.iter_any():
            await relay.feed(data)
            if relay.client_gone and plan is None:
                break  # nobody to answer and nothing to store: stop paying for tokens
    except (TimeoutError, aiohttp.ClientError) as exc:
        relay.broken = True
        await relay.send_error(f"The upstream stream failed ({type(exc).__name__}).")
    finally:
        if relay.done:
            upstream.release()
        else:
            upstream.close()  # never return a half-read connection to the pool
    if plan is not None and relay.complete:
        answer = assemble(relay.chunks, kind)
        usage = _usage_from(answer.get("usage") or {}, Usage)
        entry = stored_response(_encode(answer), plan.meta, usage)
        await runtime.store.put(plan.key.entry, encode_entry(entry), plan.ttl_s)
    await relay.finish()
    return response


class _Relay:
    def __init__(self, response: web.StreamResponse, include_usage: bool) -> None:
        self.response = response
        self.include_usage = include_usage
        self.parser = SseParser()
        self.chunks: list[dict[str, Any]] = []
        self.done = False
        self.broken = False
        self.client_gone = False

    @property
    def complete(self) -> bool:
        return self.done and not self.broken and bool(self.chunks)

    async def feed(self, data: bytes) -> None:
        for event in self.parser.feed(data):
            if event.data == b"[DONE]":
                self.done = True
            elif event.data is not None and not self._keep(event.data):
                continue
            await self._write(event.raw)

    def _keep(self, data: bytes) -> bool:
        """Records a chunk; False for the usage-only chunk the client did not ask for."""
        try:
            chunk = _decode(data)
        except msgspec.DecodeError:
            self.broken = True
            return True
        if not isinstance(chunk, dict) or "error" in chunk:
            self.broken = True
            return True
        self.chunks.append(chunk)
        return self.include_usage or bool(chunk.get("choices")) or not chunk.get("usage")

    async def send_error(self, message: str) -> None:
        error = ErrorBody(ErrorDetail(message, "upstream_error", None, "upstream_stream_failed"))
        await self._write(format_event(_encode(error)))

    async def finish(self) -> None:
        if self.client_gone:
            return
        try:
            await self.response.write_eof()
        except ConnectionResetError:
            self.client_gone = True

    async def _write(self, payload: bytes) -> None:
        if self.client_gone:
            return
        try:
            await self.response.write(payload)
        except ConnectionResetError:
            self.client_gone = True
            log.debug("client left mid-stream; the upstream read continues")
