"""Issue 23 items 4, 5, 6 and 11 (405 part): headers a fuzzer sent to both ports. A request the
sidecar refuses leaves one WARNING line without its header values, never a credential or a
traceback (4); an `Expect` that is not `100-continue`, whatever its bytes, is an OpenAI-shaped
417 on every route (5); a max-age of thousands of digits is a max-age like any other (6); a 405
says which methods the route allows (11)."""

from __future__ import annotations

import logging
import socket
import traceback
from pathlib import Path

import pytest

from tests.admin_support import TOKEN, TOKENS
from tests.fixtures.redis_server import RedisServer
from tests.fixtures.sidecar import API_KEY, Sidecar, SidecarFactory, Stub
from tests.test_bad_bytes import CHAT, error_of, raw_request
from tests.test_headers_http import BODY, stored_ttl

SECRET = b"sk-secret-hostile-0123456789"
AUTH = b"Authorization: Bearer " + SECRET
BAD_EXPECT = b"100-c\xffntinue"


def _exchange(root: str, raw: bytes) -> bytes:
    """`raw` sent as it is; everything the server answers until it closes."""
    host, _, port = root.removeprefix("http://").partition(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(raw)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    return received


def _logged(record: logging.LogRecord) -> str:
    """All a log line would show of `record`, its traceback included."""
    text = record.getMessage()
    if record.exc_info:
        text += "".join(traceback.format_exception(*record.exc_info))
    return text


# Requests each port refuses, all carrying a credential.
HEAD = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
REFUSED = {
    "bare LF request line": b"GET /healthz HTTP/1.1\nHost: x\n" + AUTH + b"\n\n",
    "bare LF after Authorization": HEAD + AUTH + b"\nX: y\r\n\r\n",
    "control byte in a header": HEAD + AUTH + b"\r\nX: \x01\r\n\r\n",
    "Expect not UTF-8": HEAD + AUTH + b"\r\nExpect: " + BAD_EXPECT + b"\r\n\r\n",
    "Expect the secret": HEAD + AUTH + b"\r\nExpect: " + SECRET + b"\r\n\r\n",
}


@pytest.mark.parametrize("raw", REFUSED.values(), ids=REFUSED.keys())
def test_a_refused_request_is_one_warning_without_its_headers(
    sidecar: Sidecar, caplog: pytest.LogCaptureFixture, raw: bytes
) -> None:
    """Item 4. On 9f22267 the Expect ones were ERROR tracebacks (and a 417 quoting the value)."""
    caplog.set_level(logging.DEBUG)
    for root in (sidecar.root, sidecar.admin_url):
        answer = _exchange(root, raw)
        assert answer.split(b" ")[1][:1] == b"4", answer[:80]  # refused, as the client's mistake
        assert SECRET not in answer
    for record in caplog.records:
        assert SECRET.decode() not in _logged(record)
        assert "\\x" not in record.getMessage()  # no byte of the request, escaped or not
        assert record.levelno < logging.ERROR and record.exc_info is None, _logged(record)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2  # one per port


ROUTES = {
    "proxy": ["/healthz", "/readyz", "/v1/chat/completions", "/v1/models", "/nowhere"],
    "admin": ["/healthz", "/readyz", "/metrics", "/api/admin/dashboard/overview", "/nowhere"],
}


@pytest.mark.parametrize("port", ROUTES)
def test_an_expect_that_is_not_utf8_is_a_417_on_every_route(
    make_sidecar: SidecarFactory, stub: Stub, caplog: pytest.LogCaptureFixture, port: str
) -> None:
    """Item 5: a 500 on every route of both ports on 9f22267."""
    sidecar = make_sidecar(ADMIN_TOKENS=TOKENS)
    root = sidecar.root if port == "proxy" else sidecar.admin_url
    token = API_KEY if port == "proxy" else TOKEN
    caplog.set_level(logging.DEBUG)
    for path in ROUTES[port]:
        for method in ("GET", "POST"):
            headers = [("Authorization", f"Bearer {token}".encode()), ("Expect", BAD_EXPECT)]
            status, body = raw_request(root, method, path, headers, CHAT.encode())
            assert status == 417, (method, path)
            error = error_of(body)
            assert (error["param"], error["code"]) == ("Expect", "expectation_failed")
            assert "100-continue" in error["message"]
    assert stub.calls == 0
    assert all(r.levelno < logging.ERROR for r in caplog.records)
    refused = [r for r in caplog.records if "Expect" in r.getMessage()]
    assert len(refused) == 2 * len(ROUTES[port])
    assert all(r.levelno == logging.WARNING for r in refused)


def test_expect_100_continue_is_still_met(sidecar: Sidecar, stub: Stub) -> None:
    body = CHAT.encode()
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        b"Authorization: Bearer " + API_KEY.encode() + b"\r\nContent-Type: application/json\r\n"
        b"Expect: 100-Continue\r\nContent-Length: %d\r\n\r\n" % len(body)
    )
    host, _, port = sidecar.root.removeprefix("http://").partition(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(head)
        assert sock.recv(25) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(body)
        assert sock.recv(12) == b"HTTP/1.1 200"
    assert stub.calls == 1


HUGE = "9" * 5000  # int() refuses more than 4,300 digits


def test_a_max_age_of_thousands_of_digits_is_clamped(
    make_sidecar: SidecarFactory, redis_url: str, redis_server: RedisServer, tmp_path: Path
) -> None:
    """Item 6: a 500 on 9f22267. As RFC 9111 §1.2.2 says, a delta-seconds too large is 2**31,
    which ttl.max clamps as it clamps max-age=100000; leading zeros do not make it large."""
    config = tmp_path / "small-max.toml"
    config.write_text("[ttl]\nmin = 10\nmax = 120\n")
    sidecar = make_sidecar(REDIS_URL=redis_url, SIDECACHE_CONFIG=str(config))

    def ttl_for(max_age: str, question: str) -> int:
        body = {**BODY, "messages": [{"role": "user", "content": question}]}
        return stored_ttl(sidecar, redis_server, {"Cache-Control": f"max-age={max_age}"}, body)

    assert 115 <= ttl_for(HUGE, "huge") <= 120
    assert 115 <= ttl_for('"' + HUGE + '"', "quoted") <= 120
    assert 55 <= ttl_for("0" * 5000 + "60", "zeros") <= 60


def test_a_huge_max_age_with_a_non_digit_is_still_a_400(sidecar: Sidecar, stub: Stub) -> None:
    headers = {"Cache-Control": f"max-age={HUGE}x"}
    answer = sidecar.request("POST", "/v1/chat/completions", BODY, headers)
    assert answer.status == 400
    assert answer.json()["error"]["param"] == "Cache-Control"
    assert stub.calls == 0


# (port, method, path, the Allow answered)
NOT_ALLOWED = [
    ("proxy", "POST", "/healthz", {"GET", "HEAD"}),
    ("proxy", "DELETE", "/readyz", {"GET", "HEAD"}),
    ("admin", "PUT", "/api/admin/dashboard/cache/invalidate", {"POST"}),
    ("admin", "DELETE", "/api/admin/dashboard/overview", {"GET", "HEAD"}),
    ("admin", "POST", "/healthz", {"GET", "HEAD"}),
]


@pytest.mark.parametrize(("port", "method", "path", "allowed"), NOT_ALLOWED)
def test_a_405_says_what_is_allowed(
    make_sidecar: SidecarFactory, port: str, method: str, path: str, allowed: set[str]
) -> None:
    """Item 11 (part): the OpenAI-shaped 405 dropped aiohttp's Allow on 9f22267."""
    sidecar = make_sidecar(ADMIN_TOKENS=TOKENS)
    token = API_KEY if port == "proxy" else TOKEN
    auth = {"Authorization": f"Bearer {token}"}
    answer = sidecar.request(method, path, b"", auth, admin=port == "admin")
    assert answer.status == 405
    assert set(answer.headers["allow"].split(",")) == allowed
    assert answer.json()["error"]["type"] == "invalid_request_error"
    assert method in answer.json()["error"]["message"]
