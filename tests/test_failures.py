"""Typed failures (issue 18, item 3): one exception per cause, rendered OpenAI-shaped by the one
table in proxy/errors.py, which both ports' middlewares use."""

from __future__ import annotations

import msgspec
import pytest

from proxy import failures
from proxy.errors import STATUS_BY_FAILURE, failure_response, http_status
from proxy.failures import (
    BodyTooLarge,
    BreakerOpen,
    ClientGone,
    Failure,
    InvalidRequest,
    UpstreamBusy,
    UpstreamTimeout,
    UpstreamUnreachable,
)


def every_failure() -> list[type[Failure]]:
    found, todo = [], [Failure]
    while todo:
        cls = todo.pop()
        found.extend(cls.__subclasses__())
        todo.extend(cls.__subclasses__())
    return [cls for cls in found if cls.__module__ == failures.__name__]


@pytest.mark.parametrize("cls", every_failure(), ids=lambda cls: cls.__name__)
def test_every_failure_is_in_the_table(cls: type[Failure]) -> None:
    assert cls in STATUS_BY_FAILURE, f"{cls.__name__} has no status of its own"
    assert 400 <= STATUS_BY_FAILURE[cls] < 600 and STATUS_BY_FAILURE[cls] != 500


@pytest.mark.parametrize(
    ("failure", "status", "error_type", "code"),
    [
        (InvalidRequest("bad", param="input"), 400, "invalid_request_error", "invalid_value"),
        (BodyTooLarge(32 << 20), 413, "invalid_request_error", "request_too_large"),
        (ClientGone(), 499, "api_error", "client_gone"),
        (UpstreamUnreachable(OSError()), 502, "upstream_error", "upstream_unreachable"),
        (UpstreamTimeout(), 504, "timeout_error", "upstream_timeout"),
        (BreakerOpen("open", retry_after_s=7), 503, "service_unavailable", "circuit_open"),
        (UpstreamBusy("busy", retry_after_s=2), 503, "service_unavailable", "upstream_busy"),
    ],
)
def test_a_failure_renders_openai_shaped(
    failure: Failure, status: int, error_type: str, code: str
) -> None:
    response = failure_response(failure)
    assert response.status == status == http_status(failure)
    assert isinstance(response.body, bytes)
    error = msgspec.json.decode(response.body)["error"]
    assert (error["type"], error["code"], error["message"]) == (error_type, code, failure.message)
    assert error["param"] == failure.param
    retry = response.headers.get("Retry-After")
    assert retry == (None if failure.retry_after_s is None else str(failure.retry_after_s))


def test_transport_failures_are_also_the_stdlib_errors() -> None:
    """As httpx and aiohttp do: code that knows only asyncio/socket errors still catches them."""
    assert isinstance(UpstreamTimeout(), TimeoutError)
    assert isinstance(UpstreamUnreachable(OSError()), ConnectionError)
