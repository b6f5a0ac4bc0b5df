"""Who a request belongs to, and what credential goes upstream for it (docs/design.md §3).

Pass-through mode: the client's credential headers go upstream unchanged and the tenant is a
keyed hash of all of them (`Authorization`, Azure's `api-key`, Anthropic's `x-api-key`): the
upstream may authenticate by any one, so any one that differs makes another tenant. A request
with none of them is answered (the upstream says 401) but never reads or writes the cache.
Managed mode: clients present a sidecar key, each mapped to a tenant name, and the upstream key
never leaves the sidecar (the client's other credential headers are not forwarded).

Users: `X-User-Id` (else the body's `safety_identifier`, else its `user`) is trusted from anyone
holding the tenant's key; a user id is a label the app vouches for, not a credential. In managed
mode an operator can narrow that: a key written `key=tenant:user` is bound to that user (its
requests are that user's; naming another is a 403), and TRUSTED_USER_HEADER_KEYS lists the tenants
whose unbound keys may name users at all (docs/design.md §3).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import NamedTuple

from multidict import CIMultiDictProxy

from proxy.failures import InvalidRequest, NotAuthenticated, NotPermitted
from proxy.keys import KeyMaker
from proxy.persona import USER_ID_HEADER, parse_user_id
from proxy.settings import Settings

# Every request header an OpenAI-compatible upstream may take a credential from, in the fixed
# order the tenant's credential string lists them.
CREDENTIAL_HEADERS = ("Authorization", "api-key", "x-api-key")


class Identity(NamedTuple):
    tenant: str
    upstream_authorization: str | None
    # False when a pass-through request carries no credential at all: its answer is for nobody
    # in particular, so it must neither read nor write a shared entry.
    credentialed: bool = True
    # Which upstream account the request's call is made with (micro-batches never mix two).
    account: str = ""
    # Managed mode: the sidecar's key is the only credential that goes upstream.
    managed: bool = False
    # Managed mode: the user the sidecar key is bound to (`key=tenant:user`), else None.
    user: str | None = None
    # Whether the request may name its user (X-User-Id, the body's user): false for a key bound
    # to a user and for an unbound key whose tenant is not in TRUSTED_USER_HEADER_KEYS.
    names_users: bool = True

    def user_id(self, headers: Mapping[str, str], body: Mapping[str, object]) -> str | None:
        """Whose request this is. A key that may name users: `X-User-Id`, else the body's
        `safety_identifier` (what OpenAI now recommends in place of `user`), else its `user`
        (trusted as sent). Any other key: its bound user, or none; an `X-User-Id` naming anyone
        else is a 403 (so it cannot read or flush another user's entries), and the body's fields
        are left to the upstream (apps often put their own hashed id there) but not read."""
        if self.names_users:
            return parse_user_id(headers, body_user(body))
        claimed = parse_user_id(headers, None)
        if claimed is not None and claimed != self.user:
            reason = (
                "is bound to one user: X-User-Id must be that user's id or absent"
                if self.user is not None
                else "may not name a user (its tenant is not in TRUSTED_USER_HEADER_KEYS): "
                "send no X-User-Id, or use a key bound to the user (SIDECAR_KEYS key=tenant:user)"
            )
            raise NotPermitted(
                f"This sidecar key {reason}.", param=USER_ID_HEADER, code="user_not_permitted"
            )
        return self.user


class TenantResolver:
    def __init__(self, settings: Settings, keys: KeyMaker) -> None:
        self._keys = keys
        api_key = settings.upstream.api_key
        self._upstream_authorization = f"Bearer {api_key}" if api_key else None
        # Looked up by digest: the dict never holds a presented key, and lookup time does not
        # depend on how much of a wrong key matches a right one. Each key's whole identity is
        # made here once, so a request only looks it up.
        trusted = settings.tenancy.trusted_user_header_keys
        self._identity_by_digest = {
            _digest(key): Identity(
                tenant,
                self._upstream_authorization,
                True,
                self._upstream_authorization or "",
                True,
                user,
                user is None and ("*" in trusted or tenant in trusted),
            )
            for key, (tenant, user) in settings.tenancy.key_bindings().items()
        }

    def resolve(self, headers: Mapping[str, str]) -> Identity:
        if self._upstream_authorization is None:
            credential = pass_through_credential(headers)
            try:
                tenant_id = self._keys.tenant_id(credential)
            except UnicodeEncodeError:  # checked only when hashing failed: no cost on a hit
                raise _not_utf8(headers) from None
            return Identity(tenant_id, headers.get("Authorization"), bool(credential), credential)
        authorization = headers.get("Authorization")
        try:
            token = _bearer_token(authorization)
            identity = self._identity_by_digest.get(_digest(token)) if token else None
        except UnicodeEncodeError:
            raise _not_utf8(headers) from None
        if identity is None:
            raise NotAuthenticated(
                "Missing or unknown sidecar key. Send Authorization: Bearer <sidecar key>.",
                code="invalid_api_key",
            )
        return identity


def body_user(body: Mapping[str, object]) -> object:
    """The body's user id: `safety_identifier` when set, else `user` (as sent, checked by
    parse_user_id); a `safety_identifier` that is not a short string is a 400 naming it."""
    identifier = body.get("safety_identifier")
    if identifier is None or identifier == "":
        return body.get("user")
    if not isinstance(identifier, str) or len(identifier) > 512:
        raise InvalidRequest(
            "safety_identifier must be a string of at most 512 characters",
            param="safety_identifier",
        )
    return identifier


def pass_through_credential(headers: Mapping[str, str]) -> str:
    """Every credential the request carries, as one canonical string ("" for none).

    A lone `Authorization` is its value as sent, so tenants made before `api-key` and
    `x-api-key` counted keep their ids (and their entries). Otherwise each value, repeated
    headers included (the upstream may read either), is listed as `\\n<name>:<value>`: a
    header value holds no newline, so this form never equals a lone Authorization, and two
    different sets never list alike. The same key in two different headers makes two tenants
    (docs/design.md §3)."""
    if CREDENTIAL_HEADERS[1] not in headers and CREDENTIAL_HEADERS[2] not in headers:
        authorization = _all(headers, CREDENTIAL_HEADERS[0])  # the common case: one lookup
        if len(authorization) <= 1:
            return authorization[0] if authorization else ""
    values = [_all(headers, name) for name in CREDENTIAL_HEADERS]
    return "".join(
        f"\n{name}:{value}"
        for name, found in zip(CREDENTIAL_HEADERS, values, strict=True)
        for value in found
    )


def _all(headers: Mapping[str, str], name: str) -> list[str]:
    if isinstance(headers, CIMultiDictProxy):
        return headers.getall(name, [])
    value = headers.get(name)
    return [] if value is None else [value]


def _not_utf8(headers: Mapping[str, str]) -> InvalidRequest:
    """aiohttp keeps header bytes that are not UTF-8 as lone surrogates, which cannot be hashed
    or compared: the client's mistake, named but never echoed."""
    for name in CREDENTIAL_HEADERS:
        for value in _all(headers, name):
            try:
                value.encode()
            except UnicodeEncodeError:
                return InvalidRequest(f"The {name} header must be valid UTF-8 text.", param=name)
    raise AssertionError("no credential header failed to encode")  # pragma: no cover


def _bearer_token(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()
