"""What every understood route does first: read, validate and identify the request."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

import msgspec
from aiohttp import web
from multidict import CIMultiDict

from proxy.body import read_body
from proxy.directives import Directives, Scope, parse_directives
from proxy.failures import InvalidRequest
from proxy.persona import NO_PERSONA, Persona, parse_user_id
from proxy.runtime import Runtime
from proxy.tenancy import Identity
from proxy.upstream.gate import PRIORITY_HEADER, Priority, parse_priority
from proxy.upstream.headers import upstream_request_headers
from proxy.vocabulary import CacheStatus, Endpoint

_decode_json = msgspec.json.Decoder().decode
T = TypeVar("T")


@dataclass(slots=True)
class ParsedRequest:
    endpoint: Endpoint
    raw: bytes
    body: dict[str, Any]
    identity: Identity
    persona: Persona
    user_id: str | None
    directives: Directives
    priority: Priority

    @property
    def miss_status(self) -> CacheStatus:
        """X-Cache for the answer of this request's own upstream call."""
        return CacheStatus.BYPASS if self.directives.bypass else CacheStatus.MISS


async def parse_request(
    request: web.Request, runtime: Runtime, endpoint: Endpoint, *, persona_aware: bool = True
) -> ParsedRequest:
    headers = request.headers
    identity = runtime.tenants.resolve(headers)
    raw = await read_body(request)
    try:
        body = _decode_json(raw)
    except (msgspec.DecodeError, RecursionError) as exc:  # RecursionError: nested too deeply
        raise InvalidRequest(
            f"The request body is not valid JSON: {exc}", code="invalid_json"
        ) from None
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.", code="invalid_json")
    directives = parse_directives(headers)
    user_id = parse_user_id(headers, body.get("user"))
    if directives.scope is Scope.USER and user_id is None:
        raise InvalidRequest(
            "X-Cache-Scope: user needs the user's id in X-User-Id or the body's user field.",
            param="X-Cache-Scope",
        )
    persona = runtime.personas.parse(headers) if persona_aware else NO_PERSONA
    priority = parse_priority(headers.get(PRIORITY_HEADER))
    return ParsedRequest(endpoint, raw, body, identity, persona, user_id, directives, priority)


def view(kind: type[T], body: dict[str, Any]) -> T:
    """The typed view of the fields we read; a wrong type is a 400 naming the field."""
    try:
        return msgspec.convert(body, kind)
    except msgspec.ValidationError as exc:
        message = str(exc)
        param = message.rpartition("`$.")[2].rstrip("`") if "`$." in message else None
        if param is None and "missing required field" in message:
            param = message.rpartition("field `")[2].rstrip("`")
        raise InvalidRequest(f"Invalid request: {message}", param=param) from None


def upstream_headers(request: web.Request, parsed: ParsedRequest) -> CIMultiDict[str]:
    """The client's headers fit for the upstream, with this request's upstream credential."""
    return upstream_request_headers(
        request.headers, parsed.identity.upstream_authorization, keep_encoding=False
    )


def client_connected(request: web.Request) -> bool:
    transport = request.transport
    return transport is not None and not transport.is_closing()
