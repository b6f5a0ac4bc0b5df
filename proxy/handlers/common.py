"""What every understood route does first: read, validate and identify the request."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, TypeVar

import msgspec
from aiohttp import web
from multidict import CIMultiDict

from proxy.cache.entry import EntryMeta
from proxy.directives import Directives, Scope, parse_directives
from proxy.dispatch.gate import PRIORITY_HEADER, Priority, parse_priority
from proxy.errors import bad_request
from proxy.keys import CacheKey, ScopePart
from proxy.persona import NO_PERSONA, Persona, parse_user_id
from proxy.runtime import Runtime
from proxy.tenancy import Identity
from proxy.upstream.headers import upstream_request_headers

_decode_json = msgspec.json.Decoder().decode
T = TypeVar("T")

HIT, MISS, BYPASS, COALESCED = "HIT", "MISS", "BYPASS", "COALESCED"


@dataclass(slots=True)
class Understood:
    endpoint: str  # chat.completions | completions | embeddings | moderations
    raw: bytes
    body: dict[str, Any]
    identity: Identity
    persona: Persona
    user_id: str | None
    directives: Directives
    priority: Priority


async def understand(
    request: web.Request, runtime: Runtime, endpoint: str, *, persona_aware: bool = True
) -> Understood:
    headers = request.headers
    identity = runtime.tenants.resolve(headers)
    raw = await request.read()
    try:
        body = _decode_json(raw)
    except (msgspec.DecodeError, RecursionError) as exc:  # RecursionError: nested too deeply
        raise bad_request(
            f"The request body is not valid JSON: {exc}", code="invalid_json"
        ) from None
    if not isinstance(body, dict):
        raise bad_request("The request body must be a JSON object.", code="invalid_json")
    directives = parse_directives(headers)
    user_id = parse_user_id(headers, body.get("user"))
    if directives.scope is Scope.USER and user_id is None:
        raise bad_request(
            "X-Cache-Scope: user needs the user's id in X-User-Id or the body's user field.",
            param="X-Cache-Scope",
        )
    persona = runtime.personas.parse(headers) if persona_aware else NO_PERSONA
    priority = parse_priority(headers.get(PRIORITY_HEADER))
    return Understood(endpoint, raw, body, identity, persona, user_id, directives, priority)


def view(kind: type[T], body: dict[str, Any]) -> T:
    """The typed view of the fields we read; a wrong type is a 400 naming the field."""
    try:
        return msgspec.convert(body, kind)
    except msgspec.ValidationError as exc:
        message = str(exc)
        param = message.rpartition("`$.")[2].rstrip("`") if "`$." in message else None
        if param is None and "missing required field" in message:
            param = message.rpartition("field `")[2].rstrip("`")
        raise bad_request(f"Invalid request: {message}", param=param) from None


def entry_meta(u: Understood, model: str, scope: ScopePart, generation: int) -> EntryMeta:
    """What invalidation needs to know of an entry: `generation` is the invalidation generation
    known when the miss began (read it before any await that could let a rule in)."""
    persona: dict[str, str] = {}
    if scope[0] == "p":
        persona = {d: v for d, v in zip(scope[1], scope[2], strict=True) if v is not None}
    elif scope[0] == "u":
        persona = u.persona.as_dict()  # a change of it invalidates the user's entries
    return EntryMeta(
        tenant=u.identity.tenant,
        endpoint=u.endpoint,
        model=model,
        scope=u.directives.scope.value,
        user_id=u.user_id,
        persona=persona,
        generation=generation,
    )


def cache_headers(
    status: str, key: CacheKey | None, stored_at: float | None = None
) -> dict[str, str]:
    headers = {"X-Cache": status}
    if key is not None:
        headers["X-Cache-Key"] = key.short_id
    if stored_at is not None:
        headers["Age"] = str(max(0, int(time.time() - stored_at)))
    return headers


def upstream_headers(request: web.Request, u: Understood) -> CIMultiDict[str]:
    """The client's headers fit for the upstream, with this request's upstream credential."""
    return upstream_request_headers(
        request.headers, u.identity.upstream_authorization, keep_encoding=False
    )


def client_connected(request: web.Request) -> bool:
    transport = request.transport
    return transport is not None and not transport.is_closing()


def miss_status(u: Understood) -> str:
    return BYPASS if u.directives.bypass else MISS
