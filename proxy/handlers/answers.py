"""Stored answers: what an entry records, looked up for a request, served as JSON or replayed
as SSE; and the cache headers every understood answer carries (docs/design.md §3)."""

from __future__ import annotations

import time

from aiohttp import web

from proxy.cache.entry import EntryMeta
from proxy.cache.formats import replay_stream
from proxy.handlers.freshness import still_valid
from proxy.handlers.hot import Prepared, PreparedEntries
from proxy.handlers.parse import ParsedRequest
from proxy.keys import CacheKey, ScopePart
from proxy.limits import RATE_DECISION, Decision, rated_response
from proxy.runtime import Runtime
from proxy.vocabulary import CacheMatch, CacheStatus

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
        headers["Age"] = _age(stored_at)
    return headers


def _age(stored_at: float) -> str:
    return str(max(0, int(time.time() - stored_at)))


def entry_meta(parsed: ParsedRequest, model: str, scope: ScopePart, generation: int) -> EntryMeta:
    """What invalidation needs to know of an entry: `generation` is the invalidation generation
    known when the miss began (read it before any await that could let a rule in)."""
    persona: dict[str, str] = {}
    if scope[0] == "p":
        persona = {d: v for d, v in zip(scope[1], scope[2], strict=True) if v is not None}
    elif scope[0] == "u":
        persona = parsed.persona_fields  # a change of it invalidates the user's entries
    return EntryMeta(
        tenant=parsed.identity.tenant,
        endpoint=parsed.endpoint,
        model=model,
        scope=parsed.directives.scope.value,
        user_id=parsed.user_id,
        persona=persona,
        generation=generation,
    )


async def lookup(
    runtime: Runtime, prepared: PreparedEntries, parsed: ParsedRequest, key: CacheKey
) -> Prepared | None:
    """The stored answer for `key`, unless the request said not to read (or it is broken)."""
    if not parsed.directives.read:
        return None
    raw = await runtime.store.get(key.entry)
    found = prepared.get(key, raw) if raw is not None else None
    if found is None or await still_valid(runtime, parsed, found.entry.meta):
        return found
    return None


async def serve_stored(
    request: web.Request,
    found: Prepared,
    *,
    stream: bool = False,
    include_usage: bool = False,
    match: dict[str, str] | None = None,
    rated: Decision | None = None,
) -> web.StreamResponse:
    """`match`: a semantic hit's X-Cache-Match and X-Cache-Similarity. `rated`: a leased
    request's rate decision, whose headers a JSON answer writes itself (proxy/limits/headers.py);
    a stream's are added by the proxy's response signal, as every other answer's are."""
    headers = {**found.headers, "Age": _age(found.entry.stored_at)}
    if match is not None:
        headers.update(match)
    if not stream:
        if rated is not None:
            return rated_response(found.entry.body, headers, rated)
        return web.Response(body=found.entry.body, headers=headers)
    if rated is not None:
        request[RATE_DECISION] = rated
    headers.update(SSE_HEADERS)
    return await _write_sse(request, found.replay(include_usage), headers)


async def write_replay(
    request: web.Request, body: bytes, include_usage: bool, headers: dict[str, str]
) -> web.StreamResponse:
    """A whole chat.completion / text_completion answered as the SSE stream it would have been."""
    return await _write_sse(request, replay_stream(body, include_usage), {**SSE_HEADERS, **headers})


async def _write_sse(
    request: web.Request, payload: bytes, headers: dict[str, str]
) -> web.StreamResponse:
    response = web.StreamResponse(headers=headers)
    await response.prepare(request)
    try:
        await response.write(payload)
        await response.write_eof()
    except ConnectionResetError:
        pass  # the client left; nothing is shared with anyone else
    return response
