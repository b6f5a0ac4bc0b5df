"""`/v1/chat/completions` and `/v1/completions`: persona-aware cache, JSON or SSE either way,
and identical concurrent misses sharing one upstream call."""

from __future__ import annotations

import msgspec
from aiohttp import web

from proxy.cache.replay import CHAT, TEXT
from proxy.dispatch.call import StorePlan, UpstreamCall, validator
from proxy.dispatch.fly import launch
from proxy.handlers.answers import lookup, serve_stored
from proxy.handlers.common import (
    COALESCED,
    Understood,
    entry_meta,
    miss_status,
    understand,
    upstream_headers,
    view,
)
from proxy.handlers.costing import count_flight, count_hit, open_outcome, preflight
from proxy.handlers.flights import flight_for, respond
from proxy.runtime import RUNTIME
from proxy.ttl import chat_kind
from proxy.wire import GenerativeAnswer, GenerativeRequest

_validate = validator(GenerativeAnswer)
_encode = msgspec.json.Encoder().encode


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
    outcome = open_outcome(request, u, req.model)
    entry = await lookup(runtime, u, key)
    if entry is not None:
        count_hit(runtime, outcome, entry)
        return await serve_stored(request, entry, key, stream=stream, include_usage=include_usage)
    meta = entry_meta(u, req.model, scope, runtime.invalidations.generation)

    await preflight(runtime, u, req.model)

    plan = None
    if u.directives.write:
        ttl = runtime.ttl.seconds(
            chat_kind(req.temperature, req.seed), u.persona.score, u.directives.max_age
        )
        plan = StorePlan(key, ttl, meta)
    flight, leader = flight_for(runtime, u, key)
    if leader:
        launch(runtime, flight, _call(request, u, kind, stream, plan))
    label = miss_status(u) if leader else COALESCED
    response = await respond(
        request, flight, key, label, stream=stream, include_usage=include_usage
    )
    await count_flight(runtime, outcome, u, flight, leader)
    return response


def _call(
    request: web.Request, u: Understood, kind: str, stream: bool, plan: StorePlan | None
) -> UpstreamCall:
    body = u.raw
    if stream:
        # Always ask for the usage chunk (the ledger needs it); clients that did not ask for
        # it never see it.
        options = {**(u.body.get("stream_options") or {}), "include_usage": True}
        body = _encode({**u.body, "stream_options": options})
    return UpstreamCall(
        endpoint=u.endpoint,
        path=request.path,
        headers=upstream_headers(request, u),
        body=body,
        priority=u.priority,
        validate=_validate,
        plan=plan,
        stream=stream,
        kind=kind,
        coalesce=u.directives.read,
    )
