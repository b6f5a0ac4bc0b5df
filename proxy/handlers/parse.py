"""What every understood route does first: read, validate and identify the request."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

import msgspec
from aiohttp import web
from multidict import CIMultiDict

from proxy.body import read_inflated
from proxy.directives import Directives, Scope, parse_directives
from proxy.failures import InvalidRequest
from proxy.handlers.json_body import decode_object
from proxy.persona import NO_PERSONA, Persona
from proxy.runtime import Runtime
from proxy.tenancy import Identity
from proxy.upstream.gate import PRIORITY_HEADER, Priority, parse_priority
from proxy.upstream.headers import upstream_request_headers
from proxy.vocabulary import CacheStatus, Endpoint

T = TypeVar("T")


@dataclass(slots=True)
class ParsedRequest:
    endpoint: Endpoint
    raw: bytes
    body: dict[str, Any]
    identity: Identity
    persona: Persona
    persona_fields: dict[str, str]  # `persona.as_dict()`, made once (the ledger and rules read it)
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
    raw = await read_inflated(request, runtime.settings.server.max_body_bytes)
    body = decode_object(raw)
    directives = parse_directives(headers)
    if not identity.credentialed:
        # No credential: the answer is nobody's in particular, so it is shared with nobody.
        # Decided here once; every step after reads only the directives (X-Cache: BYPASS).
        directives = directives.uncached()
    user_id = identity.user_id(headers, body)
    if directives.scope is Scope.USER and user_id is None:
        raise InvalidRequest(
            "X-Cache-Scope: user needs the user's id in X-User-Id or the body's "
            "safety_identifier or user field.",
            param="X-Cache-Scope",
        )
    persona = runtime.personas.parse(headers) if persona_aware else NO_PERSONA
    priority = parse_priority(headers.get(PRIORITY_HEADER))
    return ParsedRequest(
        endpoint, raw, body, identity, persona, persona.as_dict(), user_id, directives, priority
    )


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
    identity = parsed.identity
    return upstream_request_headers(
        request.headers,
        identity.upstream_authorization,
        keep_encoding=False,
        managed=identity.managed,
    )


def client_connected(request: web.Request) -> bool:
    transport = request.transport
    return transport is not None and not transport.is_closing()
