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
from proxy.handlers.pipeline import Asked, Batching, CachedRoute, serve_cached
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

    def read(self, parsed: ParsedRequest) -> Asked:
        req = view(GenerativeRequest, parsed.body)
        return Asked(
            model=req.model,
            ttl_kind=chat_kind(req.temperature, req.seed),
            stream=bool(req.stream),
            include_usage=bool(req.stream_options and req.stream_options.include_usage),
        )

    def upstream_body(self, parsed: ParsedRequest, asked: Asked) -> bytes:
        if not asked.stream:
            return parsed.raw
        # Always ask for the usage chunk (the ledger needs it); clients that did not ask for
        # it never see it.
        options = {**(parsed.body.get("stream_options") or {}), "include_usage": True}
        return _encode({**parsed.body, "stream_options": options})


CHAT_ROUTE = CachedRoute(Endpoint.CHAT, GenerativeWire(CHAT), persona_aware=True, semantic=True)
COMPLETIONS_ROUTE = CachedRoute(Endpoint.COMPLETIONS, GenerativeWire(TEXT), persona_aware=True)


async def chat_completions(request: web.Request) -> web.StreamResponse:
    return await serve_cached(request, CHAT_ROUTE)


async def completions(request: web.Request) -> web.StreamResponse:
    return await serve_cached(request, COMPLETIONS_ROUTE)
