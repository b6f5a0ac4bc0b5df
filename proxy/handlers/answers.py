"""Stored answers: looked up for a request, served as JSON or replayed as SSE."""

from __future__ import annotations

import msgspec
from aiohttp import web

from proxy.cache.entry import StoredResponse, decode_response
from proxy.cache.replay import replay
from proxy.handlers.common import HIT, Understood, cache_headers
from proxy.handlers.freshness import still_valid
from proxy.keys import CacheKey
from proxy.runtime import Runtime
from proxy.sse import DONE, format_event

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode
SSE_HEADERS = {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}


async def lookup(runtime: Runtime, u: Understood, key: CacheKey) -> StoredResponse | None:
    """The stored answer for `key`, unless the request said not to read (or it is broken)."""
    if not u.directives.read:
        return None
    raw = await runtime.store.get(key.entry)
    entry = decode_response(raw) if raw is not None else None
    if entry is None or await still_valid(runtime, u, entry.meta):
        return entry
    return None


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
    return await write_replay(request, entry.body, include_usage, headers)


async def write_replay(
    request: web.Request, body: bytes, include_usage: bool, headers: dict[str, str]
) -> web.StreamResponse:
    """A whole chat.completion / text_completion answered as the SSE stream it would have been."""
    chunks = replay(_decode(body), include_usage)
    response = web.StreamResponse(headers={**SSE_HEADERS, **headers})
    await response.prepare(request)
    payload = b"".join(format_event(_encode(chunk)) for chunk in chunks) + DONE
    try:
        await response.write(payload)
        await response.write_eof()
    except ConnectionResetError:
        pass  # the client left; nothing is shared with anyone else
    return response
