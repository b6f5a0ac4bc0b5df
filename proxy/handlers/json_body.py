"""A request body decoded as a JSON object, refused when an object repeats a key.

msgspec keeps the last of two equal keys, but the original bytes go upstream, where a parser
may keep the first: the cache key and the price would then describe another request than the
one answered, and that answer would be stored for the other one. So a request that goes
upstream with a repeated key is a 400, found without a second parse in the common case. The
check runs only on a miss (`refuse_repeated_keys`): a hit sends nothing upstream, and what it
serves was stored for the body as the key reads it.

JSON writes one `:` outside strings per object member, and a `:` inside a string either as it
is or as the escape `\\u003a`. msgspec re-encodes the decoded body with one `:` per member it
kept and every string's colons as they are. So, with R the raw body's colons and E the
re-encoding's, R - E = (members lost to repeats) - (colons written as escapes): R > E is a
repeat; R == E is none unless the raw body holds an escaped colon (checked only then, and only
when it holds a backslash at all); R < E means escaped colons, and an exact parse decides.
Cost: one C encode and two C counts, about the cost of the decode itself (figures in the
commit that added it); nothing per object in Python.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec

from proxy.canonical import number
from proxy.failures import InvalidRequest

# Numbers are read by value as they are decoded (an integral float is its integer): the cache
# key needs them so (proxy/canonical.py), and doing it here costs nothing for a body without
# floats, where a walk of the decoded body would cost on every hit.
_decode = msgspec.json.Decoder(float_hook=number).decode
_encode = msgspec.json.Encoder().encode
_ESCAPES_3X = b"\\u003"  # the start of `\\u003a` or `\\u003A` (and of `\\u0030` to `\\u003f`)


def decode_object(raw: bytes) -> dict[str, Any]:
    """The body as a dict; InvalidRequest (never quoting the body) when it is not one."""
    try:
        body = _decode(raw)
    except (msgspec.DecodeError, RecursionError) as exc:  # RecursionError: nested too deeply
        raise InvalidRequest(
            f"The request body is not valid JSON: {exc}", code="invalid_json"
        ) from None
    except UnicodeDecodeError:
        raise InvalidRequest("The request body is not valid UTF-8.", code="invalid_json") from None
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.", code="invalid_json")
    return body


def refuse_repeated_keys(raw: bytes, body: dict[str, Any]) -> None:
    """InvalidRequest when an object of `raw` (decoded as `body`) repeats a key."""
    if _members_lost(raw, body):
        raise InvalidRequest(
            "The request body repeats a key within one JSON object.", code="invalid_json"
        )


def _members_lost(raw: bytes, body: dict[str, Any]) -> bool:
    raw_colons, kept_colons = raw.count(b":"), _encode(body).count(b":")
    if raw_colons > kept_colons:
        return True
    # find() of one byte is a memchr; most bodies hold no backslash, or no `\\u003` after it.
    if raw_colons == kept_colons and (raw.find(b"\\") < 0 or _ESCAPES_3X not in raw):
        return False
    return _repeats_exactly(raw)  # escaped colons, which could hide a lost member


def _repeats_exactly(raw: bytes) -> bool:
    repeated = False

    def pairs(items: list[tuple[str, Any]]) -> None:
        nonlocal repeated
        if len({key for key, _ in items}) != len(items):
            repeated = True

    json.loads(raw, object_pairs_hook=pairs)
    return repeated
