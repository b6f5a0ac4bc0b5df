"""`/v1/chat/completions` and `/v1/completions`: persona-aware cache, JSON or SSE either way,
and identical concurrent misses sharing one upstream call. Their wire adapter for the
pipeline (proxy/handlers/pipeline.py)."""

from __future__ import annotations

from dataclasses import dataclass

import msgspec
from aiohttp import web

from proxy.cache.replay import CHAT, TEXT
from proxy.dispatch.call import Validator, validator
from proxy.handlers.parse import ParsedRequest, view
from proxy.handlers.pipeline import serve_cached
from proxy.handlers.prompt_cache import with_prompt_cache_key
from proxy.handlers.route import Asked, Batching, CachedRoute
from proxy.runtime import RUNTIME
from proxy.ttl import chat_kind
from proxy.vocabulary import Endpoint
from proxy.wire import GenerativeAnswer, GenerativeRequest

_encode = msgspec.json.Encoder().encode
_VALIDATE = validator(GenerativeAnswer)


@dataclass(frozen=True, slots=True)
class GenerativeWire:
    stream_kind: str  # CHAT or TEXT
    validate: Validator = _VALIDATE
    batching: Batching | None = None
    # Chat only: set a provider prompt_cache_key when the client sent none (PROMPT_CACHE_KEY).
    prompt_cache: bool = False

    def read(self, parsed: ParsedRequest) -> Asked:
        req = view(GenerativeRequest, parsed.body)
        return Asked(
            model=req.model,
            ttl_kind=chat_kind(req.temperature, req.seed),
            stream=bool(req.stream),
            include_usage=bool(req.stream_options and req.stream_options.include_usage),
        )

    def upstream_body(self, parsed: ParsedRequest, asked: Asked) -> bytes:
        body = parsed.body
        keyed = with_prompt_cache_key(body, parsed.identity.tenant) if self.prompt_cache else None
        if not asked.stream:  # the client's exact bytes unless a key was added
            return parsed.raw if keyed is None else _encode(keyed)
        # Always ask for the usage chunk (the ledger needs it); clients that did not ask for
        # it never see it.
        options = {**(body.get("stream_options") or {}), "include_usage": True}
        return _encode({**(keyed or body), "stream_options": options})


CHAT_ROUTE = CachedRoute(
    Endpoint.CHAT, GenerativeWire(CHAT, prompt_cache=True), persona_aware=True, semantic=True
)
CHAT_ROUTE_UNKEYED = CachedRoute(  # PROMPT_CACHE_KEY=off
    Endpoint.CHAT, GenerativeWire(CHAT), persona_aware=True, semantic=True
)
COMPLETIONS_ROUTE = CachedRoute(Endpoint.COMPLETIONS, GenerativeWire(TEXT), persona_aware=True)


async def chat_completions(request: web.Request) -> web.StreamResponse:
    keyed = request.app[RUNTIME].settings.upstream.prompt_cache_key
    return await serve_cached(request, CHAT_ROUTE if keyed else CHAT_ROUTE_UNKEYED)


async def completions(request: web.Request) -> web.StreamResponse:
    return await serve_cached(request, COMPLETIONS_ROUTE)
