"""`/v1/chat/completions` and `/v1/completions`: persona-aware cache, JSON or SSE either way."""

from __future__ import annotations

from aiohttp import web

from proxy.cache.replay import CHAT, TEXT
from proxy.handlers.answers import StorePlan, fetch_json, lookup, serve_stored, validator
from proxy.handlers.common import entry_meta, understand, view
from proxy.handlers.streaming import relay_stream
from proxy.runtime import RUNTIME
from proxy.ttl import chat_kind
from proxy.wire import GenerativeAnswer, GenerativeRequest

_validate = validator(GenerativeAnswer)


async def chat_completions(request: web.Request) -> web.StreamResponse:
    return await _generative(request, "chat.completions", CHAT)


async def completions(request: web.Request) -> web.StreamResponse:
    return await _generative(request, "completions", TEXT)


async def _generative(request: web.Request, endpoint: str, kind: str) -> web.StreamResponse:
    runtime = request.app[RUNTIME]
    u = await understand(request, runtime, endpoint)
    req = view(GenerativeRequest, u.body)
    keys = runtime.keys
    scope = keys.scope_part(
        u.directives, u.persona, u.user_id, keys.persona_dims(endpoint, req.model)
    )
    key = keys.request_key(u.identity.tenant, endpoint, u.body, scope)
    stream = bool(req.stream)
    include_usage = bool(req.stream_options and req.stream_options.include_usage)
    entry = await lookup(runtime, u, key)
    if entry is not None:
        return await serve_stored(request, entry, key, stream=stream, include_usage=include_usage)
    plan = None
    if u.directives.write:
        ttl = runtime.ttl.seconds(
            chat_kind(req.temperature, req.seed), u.persona.score, u.directives.max_age
        )
        plan = StorePlan(key, ttl, entry_meta(u, req.model, scope))
    if stream:
        return await relay_stream(request, runtime, u, kind, plan, key, include_usage)
    return await fetch_json(request, runtime, u, _validate, plan, key)
