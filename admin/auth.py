"""Who may call the admin JSON API (docs/design.md §6).

Every `/api/admin/*` route except the OpenAPI document (`/api/admin/openapi.json`, which holds
no data) needs `Authorization: Bearer <token>` with a token from `ADMIN_TOKENS`, compared in
constant time against every configured token. When `ADMIN_USER_IDS` is set, `X-Admin-User`
must be one of them too. A missing or wrong token is a 401, a missing or unlisted user a 403,
both in OpenAI's error shape.

With no `ADMIN_TOKENS` configured the API is closed, not open: every `/api/admin/*` route
answers 401 and says to set `ADMIN_TOKENS` (a loopback bind does not make a route safe from
other processes on the host). `/healthz`, `/readyz` and `/metrics` never need a token.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware

from proxy.failures import NotAuthenticated, NotPermitted

API_PREFIX = "/api/admin/"
OPEN_PATHS = frozenset({"/api/admin/openapi.json"})
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Caller:
    """The authenticated caller: the audit trail's `who` (never the token itself)."""

    def __init__(self, token_index: int, token: str, user: str | None) -> None:
        self.token_index = token_index
        self.fingerprint = hashlib.sha256(token.encode()).hexdigest()[:8]
        self.user = user

    @property
    def who(self) -> str:
        return self.user or f"token#{self.token_index}:{self.fingerprint}"


CALLER = web.RequestKey("admin_caller", Caller)


def authenticate(request: web.Request, tokens: list[str], user_ids: list[str]) -> Caller:
    """The caller, or NotAuthenticated / NotPermitted."""
    if not tokens:
        raise NotAuthenticated(
            "The admin API is disabled: no admin tokens are configured. Set ADMIN_TOKENS "
            "(comma-separated) and send `Authorization: Bearer <token>`.",
            code="admin_tokens_not_configured",
        )
    scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
    presented = presented.strip()
    if scheme.lower() != "bearer" or not presented:
        raise NotAuthenticated(
            "Missing admin token: send `Authorization: Bearer <token>`.",
            code="missing_admin_token",
        )
    given = _utf8(presented)
    if given is None:  # bytes that are not UTF-8 match no configured token (never echoed)
        raise NotAuthenticated("Invalid admin token.", code="invalid_admin_token")
    index = -1
    for i, token in enumerate(tokens):  # every token compared: no early exit to time
        if hmac.compare_digest(given, token.encode()) and index < 0:
            index = i
    if index < 0:
        raise NotAuthenticated("Invalid admin token.", code="invalid_admin_token")
    user = request.headers.get("X-Admin-User") or None
    if user_ids and (user is None or not any(_same(user, u) for u in user_ids)):
        raise NotPermitted(
            "X-Admin-User must name an admin listed in ADMIN_USER_IDS.",
            param="X-Admin-User",
            code="admin_user_not_allowed",
        )
    return Caller(index, tokens[index], user)


def _same(a: str, b: str) -> bool:
    given = _utf8(a)
    return given is not None and hmac.compare_digest(given, b.encode())


def _utf8(value: str) -> bytes | None:
    """`value` as UTF-8, or None when it came as other bytes (aiohttp keeps those as lone
    surrogates, which cannot be encoded: a 500 before this)."""
    try:
        return value.encode()
    except UnicodeEncodeError:
        return None


def auth_middleware(tokens: list[str], user_ids: list[str]) -> Middleware:
    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith(API_PREFIX) and request.path not in OPEN_PATHS:
            request[CALLER] = authenticate(request, tokens, user_ids)
        return await handler(request)

    return check
