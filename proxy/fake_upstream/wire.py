"""OpenAI-shaped errors and JSON answers, gzip-compressed when the knob and the client allow."""

from __future__ import annotations

import gzip
from typing import Any

import msgspec
from aiohttp import web

from .state import FakeUpstream

FAKE_KEY = web.AppKey("fake_upstream", FakeUpstream)

_ENCODER = msgspec.json.Encoder()
_JSON = "application/json"

# The error `type` real OpenAI sends with each status.
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "permission_error",
    404: "invalid_request_error",
    409: "invalid_request_error",
    422: "invalid_request_error",
    429: "requests",
}


class FakeApiError(Exception):
    """Raised by a handler to answer an OpenAI-shaped error, typed as real OpenAI types it
    (the sidecar's own errors use `proxy.errors`' table)."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers or {}

    def payload(self) -> dict[str, Any]:
        error_type = _ERROR_TYPES.get(self.status, "server_error")
        return {
            "error": {
                "message": self.message,
                "type": error_type,
                "param": self.param,
                "code": self.code,
            }
        }


def accepts_gzip(accept_encoding: str) -> bool:
    """True when `Accept-Encoding` lists gzip (or `*`) without `q=0`."""
    for item in accept_encoding.split(","):
        coding, _, params = item.strip().partition(";")
        if coding.strip().lower() not in ("gzip", "*"):
            continue
        quality = params.strip().lower().replace(" ", "")
        if not quality.startswith("q="):
            return True
        try:
            return float(quality[2:]) > 0
        except ValueError:
            return False
    return False


def json_answer(
    request: web.Request,
    payload: Any,
    *,
    status: int = 200,
    headers: dict[str, str] | None = None,
) -> web.Response:
    body = _ENCODER.encode(payload)
    out_headers = dict(headers or {})
    fake = request.app[FAKE_KEY]
    if fake.gzip and accepts_gzip(request.headers.get("Accept-Encoding", "")):
        body = gzip.compress(body, compresslevel=1)
        out_headers["Content-Encoding"] = "gzip"
    return web.Response(body=body, status=status, content_type=_JSON, headers=out_headers)


def plain_json(payload: Any, *, status: int = 200) -> web.Response:
    """An uncompressed JSON answer (the control endpoints)."""
    return web.Response(body=_ENCODER.encode(payload), status=status, content_type=_JSON)


# The error `type` Anthropic sends with each status (its Messages API: `/v1/messages...`).
_ANTHROPIC_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
}


def anthropic_payload(error: FakeApiError) -> dict[str, Any]:
    error_type = _ANTHROPIC_ERROR_TYPES.get(error.status, "api_error")
    return {"type": "error", "error": {"type": error_type, "message": error.message}}


def error_answer(request: web.Request, error: FakeApiError) -> web.Response:
    """The error in OpenAI's shape, or Anthropic's on its Messages routes."""
    anthropic = request.path.startswith("/v1/messages")
    payload = anthropic_payload(error) if anthropic else error.payload()
    return json_answer(request, payload, status=error.status, headers=error.headers)


def encode_event(payload: Any) -> bytes:
    return b"data: " + _ENCODER.encode(payload) + b"\n\n"
