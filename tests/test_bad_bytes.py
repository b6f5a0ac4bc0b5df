"""Issue 19 item 9 (part): bytes that are not what the protocol allows are the client's mistake,
a 400 or 401 naming what was wrong, never a 500, and never echoed (docs/design.md §7)."""

from __future__ import annotations

import json
import socket
from typing import Any

import pytest

from tests.admin_support import TOKEN, TOKENS
from tests.fixtures.sidecar import API_KEY, Sidecar, SidecarFactory, Stub

CHAT = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
SECRET_ISH = b"sk-\xff\xfe-not-utf8"


def raw_request(
    root: str, method: str, path: str, headers: list[tuple[str, bytes]], body: bytes = b""
) -> tuple[int, bytes]:
    """One request written byte for byte (http.client would re-encode the header values)."""
    host, _, port = root.removeprefix("http://").partition(":")
    head = f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n".encode()
    for name, value in headers:
        head += name.encode() + b": " + value + b"\r\n"
    head += b"Content-Length: %d\r\n\r\n" % len(body)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(head + body)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    status_line, _, rest = received.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


def error_of(body: bytes) -> dict[str, Any]:
    error: dict[str, Any] = json.loads(body)["error"]
    return error


@pytest.mark.parametrize("header", ["Authorization", "api-key", "x-api-key"])
@pytest.mark.parametrize(
    ("method", "path"), [("POST", "/v1/chat/completions"), ("GET", "/v1/models")]
)
def test_a_credential_that_is_not_utf8_is_a_400(
    sidecar: Sidecar, stub: Stub, header: str, method: str, path: str
) -> None:
    status, body = raw_request(
        sidecar.root, method, path, [(header, b"Bearer " + SECRET_ISH)], CHAT.encode()
    )
    assert status == 400
    assert error_of(body)["param"] == header
    assert b"sk-" not in body
    assert stub.calls == 0


def test_managed_mode_too(make_sidecar: SidecarFactory, stub: Stub) -> None:
    sidecar = make_sidecar(UPSTREAM_API_KEY="sk-upstream", SIDECAR_KEYS="sk-sc=team")
    auth = [("Authorization", b"Bearer " + SECRET_ISH)]
    status, body = raw_request(sidecar.root, "POST", "/v1/chat/completions", auth, CHAT.encode())
    assert status == 400
    assert b"sk-" not in body
    assert stub.calls == 0


def test_the_admin_port_answers_401_and_403(make_sidecar: SidecarFactory) -> None:
    sidecar = make_sidecar(ADMIN_TOKENS=TOKENS, ADMIN_USER_IDS="alice")
    path = "/api/admin/dashboard/overview"
    status, body = raw_request(
        sidecar.admin_url, "GET", path, [("Authorization", b"Bearer " + SECRET_ISH)]
    )
    assert (status, error_of(body)["code"]) == (401, "invalid_admin_token")
    assert b"sk-" not in body
    bad_user = [("Authorization", f"Bearer {TOKEN}".encode()), ("X-Admin-User", b"al\xffice")]
    status, body = raw_request(sidecar.admin_url, "GET", path, bad_user)
    assert (status, error_of(body)["code"]) == (403, "admin_user_not_allowed")


def test_a_body_that_is_not_utf8_is_a_400(sidecar: Sidecar, stub: Stub) -> None:
    body = CHAT.replace("hi", "h\udcffi").encode("utf-8", "surrogateescape")
    auth = [("Authorization", f"Bearer {API_KEY}".encode())]
    status, answer = raw_request(sidecar.root, "POST", "/v1/chat/completions", auth, body)
    assert status == 400
    assert error_of(answer)["code"] == "invalid_json"
    assert stub.calls == 0


@pytest.mark.parametrize(
    "digits", ["\u00b2", "\u0663", "\uff11\uff10"], ids=["superscript", "arabic", "fullwidth"]
)
def test_a_max_age_that_is_not_ascii_digits_is_a_400(
    sidecar: Sidecar, stub: Stub, digits: str
) -> None:
    headers = [
        ("Authorization", f"Bearer {API_KEY}".encode()),
        ("Cache-Control", f"max-age={digits}".encode()),
    ]
    status, body = raw_request(sidecar.root, "POST", "/v1/chat/completions", headers, CHAT.encode())
    assert status == 400
    error = error_of(body)
    assert error["param"] == "Cache-Control"
    assert "Cache-Control" in error["message"]
    assert stub.calls == 0


@pytest.mark.parametrize("header", ["OpenAI-Project", "OpenAI-Organization"])
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/embeddings"])
def test_an_account_header_that_is_not_utf8_is_a_400(
    sidecar: Sidecar, stub: Stub, header: str, path: str
) -> None:
    """These headers key the entry (item 10), so they must be text."""
    body = CHAT if path.endswith("completions") else '{"model": "m", "input": "x"}'
    headers = [("Authorization", f"Bearer {API_KEY}".encode()), (header, b"proj_\xff")]
    status, answer = raw_request(sidecar.root, "POST", path, headers, body.encode())
    assert status == 400
    assert error_of(answer)["param"] == header
    assert stub.calls == 0
