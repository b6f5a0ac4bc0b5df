"""The OpenAI shape of every error the sidecar answers itself, and the one table that says how
each failure (proxy/failures.py) is answered over HTTP. Both ports' error middlewares render
failures here and nowhere else."""

from __future__ import annotations

import msgspec
from aiohttp import web

from proxy.failures import (
    BadUpstreamAnswer,
    BodyTooLarge,
    BreakerOpen,
    BudgetExceeded,
    ClientGone,
    Conflict,
    Failure,
    InvalidRequest,
    NotAuthenticated,
    NotFound,
    NotPermitted,
    Overloaded,
    RateLimited,
    StoreUnavailable,
    UnreadableBody,
    UpstreamBusy,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnreachable,
)


class ErrorDetail(msgspec.Struct):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorBody(msgspec.Struct):
    error: ErrorDetail


_ENCODE = msgspec.json.Encoder().encode

# The status each failure is answered with; a subclass not listed takes its parent's.
STATUS_BY_FAILURE: dict[type[Failure], int] = {
    InvalidRequest: 400,
    BodyTooLarge: 413,
    UnreadableBody: 400,
    NotAuthenticated: 401,
    NotPermitted: 403,
    NotFound: 404,
    Conflict: 409,
    BudgetExceeded: 429,
    RateLimited: 429,
    ClientGone: 499,
    StoreUnavailable: 503,
    Overloaded: 503,
    UpstreamError: 502,
    UpstreamUnreachable: 502,
    BadUpstreamAnswer: 502,
    UpstreamTimeout: 504,
    BreakerOpen: 503,
    UpstreamBusy: 503,
}

# The `type` OpenAI uses for each status we answer ourselves.
_TYPE_BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    417: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    502: "upstream_error",
    503: "service_unavailable",
    504: "timeout_error",
}


def http_status(failure: Failure) -> int:
    for cls in type(failure).__mro__:
        status = STATUS_BY_FAILURE.get(cls)
        if status is not None:
            return status
    return 500


def failure_headers(failure: Failure) -> dict[str, str]:
    if failure.retry_after_s is None:
        return {}
    return {"Retry-After": str(failure.retry_after_s)}


# The headers of aiohttp's own HTTP errors that our answer keeps: a 405 must say which methods
# the route allows (RFC 9110 §15.5.6). Nothing else of theirs is kept.
_KEPT_HTTP_ERROR_HEADERS = ("Allow",)


def http_error_response(
    exc: web.HTTPException, message: str, *, code: str | None = None
) -> web.Response:
    """aiohttp's HTTP error `exc` in the OpenAI shape, with `message` for its text."""
    headers = {name: exc.headers[name] for name in _KEPT_HTTP_ERROR_HEADERS if name in exc.headers}
    return error_response(exc.status, message, code=code, headers=headers or None)


def failure_response(failure: Failure) -> web.Response:
    return error_response(
        http_status(failure),
        failure.message,
        param=failure.param,
        code=failure.code,
        headers=failure_headers(failure),
    )


def error_body(
    status: int, message: str, *, param: str | None = None, code: str | None = None
) -> bytes:
    detail = ErrorDetail(message, _TYPE_BY_STATUS.get(status, "api_error"), param, code)
    return _ENCODE(ErrorBody(detail))


def error_response(
    status: int,
    message: str,
    *,
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    return web.Response(
        status=status,
        body=error_body(status, message, param=param, code=code),
        content_type="application/json",
        headers=headers,
    )


# Anthropic's error `type` for each status the sidecar answers itself on `/v1/messages`.
_ANTHROPIC_TYPE_BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
}


class AnthropicErrorDetail(msgspec.Struct):
    type: str
    message: str


class AnthropicErrorBody(msgspec.Struct, tag_field="type", tag="error"):
    """`{"type": "error", "error": {"type": ..., "message": ...}}`, as Anthropic answers."""

    error: AnthropicErrorDetail


def anthropic_error_body(status: int, message: str) -> bytes:
    kind = _ANTHROPIC_TYPE_BY_STATUS.get(status, "invalid_request_error" if status < 500 else "")
    return _ENCODE(AnthropicErrorBody(AnthropicErrorDetail(kind or "api_error", message)))


def anthropic_error_response(
    status: int, message: str, *, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        status=status,
        body=anthropic_error_body(status, message),
        content_type="application/json",
        headers=headers,
    )


def anthropic_failure_response(failure: Failure) -> web.Response:
    """A failure answered in Anthropic's shape (the Messages route): the same status and
    headers (Retry-After) as `failure_response`, the same message."""
    return anthropic_error_response(
        http_status(failure), failure.message, headers=failure_headers(failure)
    )
