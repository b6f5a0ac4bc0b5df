"""Reading parameters and bodies and writing answers, the one way every admin handler does."""

from __future__ import annotations

from typing import TypeVar

import msgspec
from aiohttp import web

from admin.models import invalid
from proxy.body import read_inflated
from proxy.failures import InvalidRequest

P = TypeVar("P")
# The largest admin body, inflated (aiohttp's default limit): a warming job of 10,000 requests
# fits; a compressed body is inflated up to it and no further.
ADMIN_BODY_BYTES = 1024**2
_encode = msgspec.json.Encoder().encode


def json_answer(value: object, status: int = 200) -> web.Response:
    return web.Response(body=_encode(value), status=status, content_type="application/json")


def params(request: web.Request, kind: type[P]) -> P:
    """Query parameters as `kind`; a bad one is a 400 naming it."""
    try:
        return msgspec.convert(dict(request.query), kind, strict=False)
    except msgspec.ValidationError as exc:
        raise invalid(exc) from None


async def read_body(
    request: web.Request, kind: type[P], *, optional: bool = False, strict: bool = True
) -> P:
    """The JSON body as `kind` (an empty body is `kind()` when `optional`); a bad field is a
    400 naming it, a body that is not JSON a 400 naming `body`. Not `strict`: an integer may
    be written as JSON Schema allows it (`7.0`)."""
    raw = await read_inflated(request, ADMIN_BODY_BYTES)
    if optional and not raw.strip():
        return kind()
    try:
        return msgspec.json.decode(raw, type=kind, strict=strict)
    except msgspec.ValidationError as exc:
        raise invalid(exc) from None
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        # msgspec raises the last two itself for bytes that are not UTF-8 and for nesting
        # deeper than it recurses: the client's mistake all the same, never a 500.
        raise InvalidRequest("The body must be a JSON object in UTF-8.", param="body") from None
