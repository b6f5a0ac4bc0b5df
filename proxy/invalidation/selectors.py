"""Invalidation selectors (docs/design.md §3): which cache entries a rule covers.

A selector's fields must all match an entry's meta. Matching works on a selector's *shape* (the
names of the fields it sets) and its *values*: a rule book keeps one table per shape, so an
entry is checked with one dictionary lookup per shape, never against every rule.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import msgspec

from proxy.cache.entry import EntryMeta
from proxy.failures import InvalidRequest
from proxy.persona import HEADER_BY_DIMENSION, PersonaParser
from proxy.settings import PERSONA_DIMENSIONS
from proxy.vocabulary import Endpoint

ENDPOINTS: tuple[str, ...] = tuple(endpoint.value for endpoint in Endpoint)
# A selector's shape: the names of the fields it sets, persona dimensions as "persona.<dim>".
Shape = tuple[str, ...]
Values = tuple[str, ...]
_ENDPOINT_PATHS = {endpoint.path: endpoint.value for endpoint in Endpoint}


class Selector(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """Every field set must match; `{"all": true}` matches every entry. `scope` (persona, user
    or tenant) narrows to entries of one cache scope, as the automatic persona-change rule does."""

    all: bool = False
    tenant: str | None = None
    user_id: str | None = None
    persona: dict[str, str] | None = None
    model: str | None = None
    endpoint: str | None = None
    scope: Literal["persona", "user", "tenant"] | None = None

    def fields(self) -> tuple[Shape, Values]:
        """The selector as (shape, values), both sorted by field name; `all` is the empty shape."""
        if self.all:
            return (), ()
        pairs = [
            (name, value)
            for name, value in (
                ("endpoint", self.endpoint),
                ("model", self.model),
                ("scope", self.scope),
                ("tenant", self.tenant),
                ("user_id", self.user_id),
            )
            if value is not None
        ]
        pairs += [(f"persona.{dim}", value) for dim, value in (self.persona or {}).items()]
        pairs.sort()
        return tuple(name for name, _ in pairs), tuple(value for _, value in pairs)


def project(meta: EntryMeta, shape: Shape) -> Values | None:
    """The entry's values for a shape's fields, or None when it lacks one of them (an entry that
    was not keyed by a persona dimension never matches a selector on that dimension)."""
    out: list[str] = []
    for name in shape:
        if name.startswith("persona."):
            value = meta.persona.get(name[8:])
        elif name == "tenant":
            value = meta.tenant
        elif name == "user_id":
            value = meta.user_id
        elif name == "model":
            value = meta.model
        elif name == "endpoint":
            value = meta.endpoint
        else:
            value = meta.scope
        if value is None:
            return None
        out.append(value)
    return tuple(out)


def canonical(selector: Selector, personas: PersonaParser, param: str) -> Selector:
    """The selector checked and in the form entries record (endpoint names, canonical persona
    values); a bad one is a 400 naming `param`."""
    fields = [selector.tenant, selector.user_id, selector.persona, selector.model]
    fields += [selector.endpoint, selector.scope]
    if selector.all:
        if any(value is not None for value in fields):
            raise InvalidRequest('"all": true cannot be combined with other fields.', param=param)
        return selector
    if all(value is None for value in fields) or selector.persona == {}:
        raise InvalidRequest(
            'A selector needs at least one field, or {"all": true} to invalidate everything.',
            param=param,
        )
    for name, value in (("tenant", selector.tenant), ("user_id", selector.user_id),
                        ("model", selector.model)):  # fmt: skip
        if value is not None and not value.strip():
            raise InvalidRequest(f"{name} must not be empty.", param=f"{param}.{name}")
    endpoint = selector.endpoint
    if endpoint is not None:
        endpoint = _ENDPOINT_PATHS.get(endpoint, endpoint)
        if endpoint not in ENDPOINTS:
            allowed = ", ".join(ENDPOINTS)
            raise InvalidRequest(f"Unknown endpoint; one of: {allowed}.", param=f"{param}.endpoint")
    persona = None if selector.persona is None else _persona(selector.persona, personas, param)
    return msgspec.structs.replace(selector, endpoint=endpoint, persona=persona)


def _persona(values: Mapping[str, str], personas: PersonaParser, param: str) -> dict[str, str]:
    unknown = [dim for dim in values if dim not in PERSONA_DIMENSIONS]
    if unknown:
        allowed = ", ".join(PERSONA_DIMENSIONS)
        raise InvalidRequest(
            f"Unknown persona dimension {unknown[0][:40]!r}; one of: {allowed}.",
            param=f"{param}.persona",
        )
    for dim, value in values.items():
        if not value.strip():
            raise InvalidRequest(f"{dim} must not be empty.", param=f"{param}.persona.{dim}")
    headers = {HEADER_BY_DIMENSION[dim]: value for dim, value in values.items()}
    try:
        parsed = personas.parse(headers)
    except InvalidRequest as exc:
        dim = next(d for d, h in HEADER_BY_DIMENSION.items() if h == exc.param)
        raise InvalidRequest(exc.message, param=f"{param}.persona.{dim}") from None
    return parsed.as_dict()
