"""What a request asks of the cache: Cache-Control, X-Cache-Scope, X-Cache-Persona-Dims."""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum

import msgspec

from proxy.failures import InvalidRequest
from proxy.settings import PERSONA_DIMENSIONS

SCOPE_HEADER = "X-Cache-Scope"
DIMS_HEADER = "X-Cache-Persona-Dims"
# Forwarded headers that choose the upstream account a call is billed to and answered from, so
# they can change the answer: each one present keys the entry (README "What is cached").
ANSWER_HEADERS = ("OpenAI-Organization", "OpenAI-Project")


class Scope(StrEnum):
    PERSONA = "persona"  # shared by every user of the tenant with the same persona (default)
    USER = "user"  # private to one X-User-Id
    TENANT = "tenant"  # persona ignored


class Directives(msgspec.Struct, frozen=True):
    read: bool = True
    write: bool = True
    max_age: int | None = None
    scope: Scope = Scope.PERSONA
    # None: the configured default for the endpoint/model; () means "none".
    dims: tuple[str, ...] | None = None
    # The ANSWER_HEADERS present, as (name, value) pairs; () for most requests, whose keys it
    # then leaves exactly as they were before these headers counted.
    account: tuple[tuple[str, str], ...] = ()

    @property
    def bypass(self) -> bool:
        return not self.read and not self.write

    def uncached(self) -> Directives:
        """These directives with the cache neither read nor written (as `no-store`)."""
        return msgspec.structs.replace(self, read=False, write=False)


DEFAULT_DIRECTIVES = Directives()
_SCOPES = {s.value: s for s in Scope}
_DIMENSION_SET = frozenset(PERSONA_DIMENSIONS)


def parse_directives(headers: Mapping[str, str]) -> Directives:
    cache_control = headers.get("Cache-Control")
    scope_raw = headers.get(SCOPE_HEADER)
    dims_raw = headers.get(DIMS_HEADER)
    account = _account(headers)
    if cache_control is None and scope_raw is None and dims_raw is None and not account:
        return DEFAULT_DIRECTIVES
    read, write, max_age = _parse_cache_control(cache_control or "")
    scope = Scope.PERSONA
    if scope_raw is not None:
        found = _SCOPES.get(scope_raw.strip().lower())
        if found is None:
            raise InvalidRequest(
                f"{SCOPE_HEADER} must be one of: persona, user, tenant (got {scope_raw.strip()!r})",
                param=SCOPE_HEADER,
            )
        scope = found
    return Directives(read, write, max_age, scope, _parse_dims(dims_raw), account)


def _account(headers: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    if ANSWER_HEADERS[0] not in headers and ANSWER_HEADERS[1] not in headers:
        return ()  # the common case: two lookups
    getall = getattr(headers, "getall", None)
    account = tuple(
        (name, value)
        for name in ANSWER_HEADERS
        for value in (getall(name, ()) if getall else [headers.get(name)])
        if value is not None
    )
    for name, value in account:
        if not value.isascii():  # they are ids (org-..., proj_...); other bytes cannot be keyed
            try:
                value.encode()
            except UnicodeEncodeError:
                raise InvalidRequest(f"{name} must be valid UTF-8 text.", param=name) from None
    return account


def _parse_cache_control(value: str) -> tuple[bool, bool, int | None]:
    read = write = True
    max_age: int | None = None
    for directive in value.split(","):
        name, _, argument = directive.strip().partition("=")
        name = name.strip().lower()
        if name == "no-cache":
            read = False
        elif name == "no-store":
            read = write = False
        elif name == "max-age":
            argument = argument.strip().strip('"')
            # isdigit() alone takes "²" or "٣", which int() refuses or reads: ASCII digits only.
            if not (argument.isascii() and argument.isdigit()):
                shown = f" (got {argument!r})" if argument.isascii() else ""
                raise InvalidRequest(
                    f"Cache-Control max-age must be a whole number of seconds{shown}",
                    param="Cache-Control",
                )
            max_age = _delta_seconds(argument)
        # Other directives (private, no-transform, ...) mean nothing to this cache.
    return read, write, max_age


# RFC 9111 §1.2.2: a delta-seconds too large to represent is taken as 2**31. It also keeps a
# value of thousands of digits from int(), which refuses more than 4,300 of them (a ValueError,
# then a 500); any such max-age is clamped to ttl.max anyway (proxy/ttl.py).
_MAX_DELTA_SECONDS = 2**31
_MAX_DELTA_DIGITS = len(str(_MAX_DELTA_SECONDS))


def _delta_seconds(digits: str) -> int:
    """ASCII `digits` as a number of seconds, at most 2**31."""
    significant = digits.lstrip("0")
    if len(significant) > _MAX_DELTA_DIGITS:
        return _MAX_DELTA_SECONDS
    return min(int(significant or "0"), _MAX_DELTA_SECONDS)


def _parse_dims(raw: str | None) -> tuple[str, ...] | None:
    if raw is None:
        return None
    names = [part.strip().lower() for part in raw.split(",") if part.strip()]
    if names == ["none"]:
        return ()
    unknown = [n for n in names if n not in _DIMENSION_SET]
    if unknown or not names:
        raise InvalidRequest(
            f"{DIMS_HEADER} takes 'none' or a comma-separated subset of: "
            f"{', '.join(PERSONA_DIMENSIONS)} (got {raw.strip()!r})",
            param=DIMS_HEADER,
        )
    return tuple(d for d in PERSONA_DIMENSIONS if d in names)
