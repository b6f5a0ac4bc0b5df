"""Serving stored answers, and fetching whole JSON answers upstream (storing the good ones)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import msgspec
from aiohttp import web

from proxy.cache.entry import EntryMeta, StoredResponse, decode_response, encode_entry
from proxy.cache.replay import replay
from proxy.handlers.common import HIT, Understood, cache_headers, miss_status
from proxy.keys import CacheKey
from proxy.runtime import Runtime
from proxy.sse import DONE, format_event
from proxy.upstream.client import read_body
from proxy.upstream.headers import client_response_headers, upstream_request_headers
from proxy.wire import Usage

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode
SSE_HEADERS = {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}

# Checks an upstream answer body before it is stored: its usage when whole, None when not.
Validator = Callable[[bytes], Usage | None]


@dataclass(frozen=True, slots=True)
class StorePlan:
    """Where and for how long a successful answer is stored (absent under no-store/no-cache
    writes being off)."""

    key: CacheKey
    ttl_s: int
    meta: EntryMeta


def stored_response(body: bytes, meta: EntryMeta, usage: Usage) -> StoredResponse:
    return StoredResponse(
        body=body,
        stored_at=time.time(),
        meta=meta,
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens or 0,
        cached_tokens=usage.cached_tokens,
    )


async def lookup(runtime: Runtime, u: Understood, key: CacheKey) -> StoredResponse | None:
    """The stored answer for `key`, unless the request said not to read (or it is broken)."""
    if not u.directives.read:
        return None
    raw = await runtime.store.get(key.entry)
    return decode_response(raw) if raw is not None else None


async def serve_stored(
    request: web.Request,
    entry: StoredResponse,
    key: CacheKey,
    *,
    stream: bool = False,
    include_usage: bool = False,
) -> web.StreamResponse:
    headers = cache_headers(HIT, key, entry.stored_at)
    if not stream:
        return web.Response(body=entry.body, content_type="application/json", headers=headers)
    chunks = replay(_decode(entry.body), include_usage)
    response = web.StreamResponse(headers={**SSE_HEADERS, **headers})
    await response.prepare(request)
    payload = b"".join(format_event(_encode(chunk)) for chunk in chunks) + DONE
    try:
        await response.write(payload)
        await response.write_eof()
    except ConnectionResetError:
        pass  # the client left; nothing is shared with anyone else
    return response


async def fetch_json(
    request: web.Request,
    runtime: Runtime,
    u: Understood,
    validate: Validator,
    plan: StorePlan | None,
    key: CacheKey,
) -> web.Response:
    """One upstream call whose whole answer is relayed; a valid 200 is stored per `plan`."""
    headers = upstream_request_headers(
        request.headers, u.identity.upstream_authorization, keep_encoding=False
    )
    started = time.perf_counter()
    upstream = await runtime.upstream.send("POST", request.path, headers, u.raw)
    runtime.metrics.observe_upstream(u.endpoint, upstream.status, time.perf_counter() - started)
    body = await read_body(upstream)
    if upstream.status == 200 and plan is not None:
        usage = validate(body)
        if usage is not None:
            entry = stored_response(body, plan.meta, usage)
            await runtime.store.put(plan.key.entry, encode_entry(entry), plan.ttl_s)
    relayed = client_response_headers(upstream.headers, decoded=True)
    relayed.update(cache_headers(miss_status(u), key))
    return web.Response(status=upstream.status, body=body, headers=relayed)


def validator(kind: type[msgspec.Struct]) -> Validator:
    """A Validator for answers of `kind`, a Struct with an optional `usage` field."""
    decoder = msgspec.json.Decoder(kind)

    def validate(body: bytes) -> Usage | None:
        try:
            answer = decoder.decode(body)
        except msgspec.DecodeError:
            return None
        usage: Usage | None = getattr(answer, "usage", None)
        return usage or Usage()

    return validate
