"""Stored answers: what an entry records, looked up for a request, served as JSON or replayed
as SSE; and the cache headers every understood answer carries (docs/design.md §3)."""

from __future__ import annotations

import time

import msgspec
from aiohttp import web

from proxy.cache.entry import EntryMeta, StoredResponse, decode_response
from proxy.cache.replay import replay
from proxy.handlers.freshness import still_valid
from proxy.handlers.parse import ParsedRequest
from proxy.keys import CacheKey, ScopePart
from proxy.runtime import Runtime
from proxy.sse import DONE, format_event
from proxy.vocabulary import CacheMatch, CacheStatus

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode
SSE_HEADERS = {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}
# The cache headers of a request that went upstream, set before the call: the error middleware
# adds them to a failure's answer, so a 503 or 504 of a miss still says MISS (or COALESCED).
MISS_HEADERS = web.RequestKey("sidecache_miss_headers", dict[str, str])
_X_CACHE = {status: status.value for status in CacheStatus}  # a sixth of `.value`'s time
_EXACT = CacheMatch.EXACT.value


def cache_headers(
    status: CacheStatus, key: CacheKey | None, stored_at: float | None = None
) -> dict[str, str]:
    headers = {"X-Cache": _X_CACHE[status]}
    if status is CacheStatus.HIT:
        headers["X-Cache-Match"] = _EXACT  # a semantic hit's headers replace it
    if key is not None:
        headers["X-Cache-Key"] = key.short_id
    if stored_at is not None:
        headers["Age"] = str(max(0, int(time.time() - stored_at)))
    return headers


def entry_meta(parsed: ParsedRequest, model: str, scope: ScopePart, generation: int) -> EntryMeta:
    """What invalidation needs to know of an entry: `generation` is the invalidation generation
    known when the miss began (read it before any await that could let a rule in)."""
    persona: dict[str, str] = {}
    if scope[0] == "p":
        persona = {d: v for d, v in zip(scope[1], scope[2], strict=True) if v is not None}
    elif scope[0] == "u":
        persona = parsed.persona.as_dict()  # a change of it invalidates the user's entries
    return EntryMeta(
        tenant=parsed.identity.tenant,
        endpoint=parsed.endpoint,
        model=model,
        scope=parsed.directives.scope.value,
        user_id=parsed.user_id,
        persona=persona,
        generation=generation,
    )


async def lookup(runtime: Runtime, parsed: ParsedRequest, key: CacheKey) -> StoredResponse | None:
    """The stored answer for `key`, unless the request said not to read (or it is broken)."""
    if not parsed.directives.read:
        return None
    raw = await runtime.store.get(key.entry)
    entry = decode_response(raw) if raw is not None else None
    if entry is None or await still_valid(runtime, parsed, entry.meta):
        return entry
    return None


async def serve_stored(
    request: web.Request,
    entry: StoredResponse,
    key: CacheKey,
    *,
    stream: bool = False,
    include_usage: bool = False,
    match: dict[str, str] | None = None,
) -> web.StreamResponse:
    """`match`: a semantic hit's X-Cache-Match and X-Cache-Similarity."""
    headers = cache_headers(CacheStatus.HIT, key, entry.stored_at)
    if match is not None:
        headers.update(match)
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
