"""Errors the sidecar itself produces, always in OpenAI's shape so SDKs raise typed exceptions."""

from __future__ import annotations

import msgspec
from aiohttp import web


class ErrorDetail(msgspec.Struct):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorBody(msgspec.Struct):
    error: ErrorDetail


_ENCODE = msgspec.json.Encoder().encode

# The `type` OpenAI uses for each status we answer ourselves.
_TYPE_BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    502: "upstream_error",
    503: "service_unavailable",
    504: "timeout_error",
}


class ApiError(Exception):
    """Raised anywhere on the request path; the error middleware turns it into a response."""

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

    def response(self) -> web.Response:
        return error_response(
            self.status, self.message, param=self.param, code=self.code, headers=self.headers
        )


def bad_request(message: str, *, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code=code or "invalid_value")


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
