"""What the admin API checks beyond a field's type, written into its OpenAPI document.

msgspec's generated schemas say a field's type; the handlers then check more (a selector needs
a field, an endpoint is one of a few names, persona values come from config, a warming job
sends its strings as headers). A client, or schemathesis, reads only the document, so these
rules rewrite the generated schemas of the cache mutations to accept exactly what the server
accepts: the same rules as proxy/invalidation/selectors.py `canonical`, proxy/persona.py,
proxy/directives.py `_parse_dims` and admin/cache_ops.py, in ECMA regexes (JSON Schema's
dialect, where `$` is the end of the text and no flag makes a match case-insensitive).
What no schema says is left to the server's 400s: a job of more than 10,000 requests (requests
times personas), more distinct interest tags than `interests_max`, and, in managed mode, an
`api_key` that is not a sidecar key.
"""

from __future__ import annotations

import functools
from typing import Any

from proxy.invalidation.selectors import ENDPOINTS
from proxy.settings import PERSONA_DIMENSIONS, PersonaSettings
from proxy.vocabulary import Endpoint

_HEADER_SPACE = "[ \\t]"  # what str.strip() removes from printable ASCII


@functools.cache
def _lowers_to() -> dict[str, str]:
    """Each character whose `str.lower()` is one ASCII letter -> that letter (A-Z, and the
    Kelvin sign to k): what the server's `.lower()` lets match."""
    found: dict[str, str] = {}
    for point in range(0x110000):
        char = chr(point)
        low = char.lower()
        if char != low and len(low) == 1 and "a" <= low <= "z":
            found[char] = low
    return found


def _escape(char: str) -> str:
    """`char` as an ECMA regex writes it, in or out of a class."""
    return char if char.isascii() and (char.isalnum() or char == "_") else f"\\u{ord(char):04x}"


def _caseless(word: str, *, ascii_only: bool) -> str:
    """`word` as a regex matching whatever `.lower()`s to it."""
    out = []
    for char in word:
        variants = [char] + [c for c, low in _lowers_to().items() if low == char]
        if ascii_only:
            variants = [c for c in variants if c.isascii()]
        out.append(_escape(char) if len(variants) == 1 else f"[{''.join(map(_escape, variants))}]")
    return "".join(out)


@functools.cache
def _space() -> str:
    """A class of what `str.strip()` removes (Python's whitespace, wider than ECMA's `\\s`)."""
    return "[" + "".join(_escape(chr(p)) for p in range(0x110000) if chr(p).isspace()) + "]"


def _not_blank() -> dict[str, Any]:
    """A string `.strip()` leaves something of."""
    return {"type": "string", "pattern": "[^" + _space()[1:]}


def _tags(space: str, most: int, *, ascii_only: bool) -> str:
    """Comma-separated interest tags, each stripped and lower-cased into proxy/persona.py's
    `_TAG`, at most `most` of them (empty parts are dropped; admin/cache_ops.py counts the
    others, repeats included, where the proxy port counts distinct tags)."""
    extra = "" if ascii_only else "".join(_escape(c) for c in _lowers_to() if not c.isascii())
    tag = f"[a-zA-Z0-9{extra}][a-zA-Z0-9{extra} _.+#-]{{0,39}}"
    gap = f"[{space[1:-1]},]*"  # spaces and commas: empty parts
    return f"^{gap}(?:{tag}{space}*(?:,{gap}|$)){{0,{most}}}$"


def _persona_value(dim: str, persona: PersonaSettings, space: str, *, ascii_only: bool) -> str:
    """One persona dimension's value: blank is no value (headers) or a 400 (selectors, which
    check blanks first); otherwise its allowed values, stripped and lower-cased."""
    if dim == "interests":
        return _tags(space, persona.interests_max, ascii_only=ascii_only)
    words = "|".join(_caseless(v, ascii_only=ascii_only) for v in getattr(persona, dim))
    return f"^{space}*(?:{words})?{space}*$"


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}], "default": None}


def _selector(persona: PersonaSettings) -> dict[str, Any]:
    space = _space()
    names = sorted({*ENDPOINTS, *(e.path for e in Endpoint)})
    persona_schema = {
        "type": "object",
        "minProperties": 1,
        "additionalProperties": False,
        "properties": {
            dim: {"allOf": [_not_blank(), {"pattern": _persona_value(dim, persona, space,
                                                                     ascii_only=False)}]}
            for dim in PERSONA_DIMENSIONS
        },
    }  # fmt: skip
    fields: dict[str, Any] = {
        "tenant": _not_blank(),
        "user_id": _not_blank(),
        "persona": persona_schema,
        "model": _not_blank(),
        "endpoint": {"enum": names},
        "scope": {"enum": ["persona", "tenant", "user"]},
    }
    everything = {
        "type": "object",
        "properties": {"all": {"const": True}, **{k: {"type": "null"} for k in fields}},
        "required": ["all"],
        "additionalProperties": False,
    }
    some = {
        "type": "object",
        "properties": {"all": {"const": False}, **{k: _nullable(v) for k, v in fields.items()}},
        "additionalProperties": False,
        "anyOf": [{"required": [k], "properties": {k: v}} for k, v in fields.items()],
    }
    return {
        "title": "Selector",
        "description": 'Every field set must match; `{"all": true}` alone matches every entry. '
        "`endpoint` is an endpoint's name or its path; `persona` values are those configured.",
        "oneOf": [everything, some],
    }


def _persona_dims() -> str:
    s = _HEADER_SPACE
    dims = "|".join(_caseless(d, ascii_only=True) for d in PERSONA_DIMENSIONS)
    none = _caseless("none", ascii_only=True)
    return f"^(?:[ \\t,]*{none}[ \\t,]*|[ \\t,]*(?:{dims})(?:{s}*,[ \\t,]*(?:{dims}))*[ \\t,]*)$"


def tighten(schemas: dict[str, Any], persona: PersonaSettings) -> None:
    """Rewrites, in place, the generated schemas of the cache mutations' bodies."""
    schemas["Selector"] = _selector(persona)
    warm_persona = schemas["WarmPersona"]["properties"]
    for dim in PERSONA_DIMENSIONS:
        pattern = _persona_value(dim, persona, _HEADER_SPACE, ascii_only=True)
        warm_persona[dim] = _nullable({"type": "string", "pattern": pattern})
    user_id = f"^{_HEADER_SPACE}*[\\x21-\\x7e]{{1,128}}{_HEADER_SPACE}*$"  # parse_user_id
    warm_persona["user_id"] = _nullable({"type": "string", "pattern": user_id})
    warm = schemas["WarmBody"]
    warm["properties"]["persona_dims"] = _nullable({"type": "string", "pattern": _persona_dims()})
    warm["if"] = {"properties": {"scope": {"const": "user"}}, "required": ["scope"]}
    warm["then"] = {
        "required": ["personas"],
        "properties": {"personas": {"minItems": 1, "items": {
            "required": ["user_id"], "properties": {"user_id": {"type": "string"}}}}},
    }  # fmt: skip
