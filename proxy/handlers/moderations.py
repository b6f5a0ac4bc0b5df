"""`/v1/moderations`: whole answers cached per tenant (persona never matters to a verdict)."""

from __future__ import annotations

from aiohttp import web

from proxy.dispatch.call import StorePlan, UpstreamCall, validator
from proxy.dispatch.fly import launch
from proxy.handlers.answers import lookup, serve_stored
from proxy.handlers.common import (
    COALESCED,
    entry_meta,
    miss_status,
    understand,
    upstream_headers,
    view,
)
from proxy.handlers.flights import flight_for, respond
from proxy.runtime import RUNTIME
from proxy.ttl import Kind
from proxy.wire import ModerationAnswer, ModerationRequest

ENDPOINT = "moderations"
_validate = validator(ModerationAnswer)


async def moderations(request: web.Request) -> web.StreamResponse:
    runtime = request.app[RUNTIME]
    u = await understand(request, runtime, ENDPOINT, persona_aware=False)
    req = view(ModerationRequest, u.body)
    scope = runtime.keys.scope_part(u.directives, u.persona, u.user_id, ())
    key = runtime.keys.request_key(u.identity.tenant, ENDPOINT, u.body, scope)
    entry = await lookup(runtime, u, key)
    if entry is not None:
        return await serve_stored(request, entry, key)
    plan = None
    if u.directives.write:
        ttl = runtime.ttl.seconds(Kind.MODERATIONS, 0.0, u.directives.max_age)
        plan = StorePlan(key, ttl, entry_meta(u, req.model or "", scope))
    flight, leader = flight_for(runtime, u, key)
    if leader:
        call = UpstreamCall(
            endpoint=ENDPOINT,
            path=request.path,
            headers=upstream_headers(request, u),
            body=u.raw,
            priority=u.priority,
            validate=_validate,
            plan=plan,
            coalesce=u.directives.read,
        )
        launch(runtime, flight, call)
    return await respond(request, flight, key, miss_status(u) if leader else COALESCED)
