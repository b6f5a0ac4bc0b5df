"""Issue 19 items 9 and 11: what aiohttp's HTTP parser refuses is answered OpenAI-shaped without
echoing a byte of the request, and a request head that trickles in is cut (proxy/connection.py).
Both on both ports."""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import time

import pytest

from tests.fixtures.sidecar import API_KEY, Sidecar, SidecarFactory, Stub

SECRET = b"sk-live-secret-0123456789"
WAIT_S = 10.0  # bound of every wait below; the timeout under test is far shorter


def _send_and_read(root: str, raw: bytes) -> bytes:
    host, _, port = root.removeprefix("http://").partition(":")
    with socket.create_connection((host, int(port)), timeout=WAIT_S) as sock:
        sock.sendall(raw)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    return received


def _roots(sidecar: Sidecar) -> list[str]:
    return [sidecar.root, sidecar.admin_url]


# Each bad head, and words of its answer: the kind of error, in the sidecar's own words.
BAD_HEADS = {
    "control byte in Authorization": (
        b"GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \x01" + SECRET + b"\r\n\r\n",
        "header value",
    ),
    "control byte in a header name": (
        b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-\x02" + SECRET + b": 1\r\n\r\n",
        "header name",
    ),
    "bad request line": (b"GET /v1/models " + SECRET + b"\r\nHost: x\r\n\r\n", "request line"),
    "header too long": (
        b"GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
        + SECRET * 400
        + b"\r\n\r\n",
        "too long",
    ),
}


@pytest.mark.parametrize(("raw", "kind"), BAD_HEADS.values(), ids=BAD_HEADS.keys())
def test_a_parser_error_is_an_openai_400_that_echoes_nothing(
    sidecar: Sidecar, stub: Stub, caplog: pytest.LogCaptureFixture, raw: bytes, kind: str
) -> None:
    caplog.set_level(logging.DEBUG)
    for root in _roots(sidecar):
        answer = _send_and_read(root, raw)
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.split(b"\r\n")[0].split()[1] == b"400"
        assert b"application/json" in head
        error = json.loads(body)["error"]
        assert error["type"] == "invalid_request_error"
        assert error["code"] == "malformed_request"
        assert kind in error["message"]
        assert b"sk-" not in answer
        assert b"\\x0" not in answer
    assert stub.calls == 0
    for record in caplog.records:
        assert "sk-" not in record.getMessage()
        assert record.exc_info is None or record.levelno < logging.ERROR
    refused = [r for r in caplog.records if "malformed request" in r.getMessage()]
    assert len(refused) == 2  # one line per port
    assert all(r.levelno == logging.WARNING and r.exc_info is None for r in refused)
    assert all(kind in r.getMessage() for r in refused)


def test_the_sidecar_still_answers_after_parser_errors(sidecar: Sidecar) -> None:
    for raw, _ in BAD_HEADS.values():
        _send_and_read(sidecar.root, raw)
    answer = sidecar.request("GET", "/healthz")
    assert answer.status == 200


def _open(root: str) -> socket.socket:
    host, _, port = root.removeprefix("http://").partition(":")
    return socket.create_connection((host, int(port)), timeout=WAIT_S)


def _closed_while_trickling(sock: socket.socket, head: bytes, pause_s: float) -> bool:
    """Sends `head` one byte per `pause_s`; True when the server closed before it was all sent."""
    sock.settimeout(pause_s)
    for byte in head:
        try:
            sock.sendall(bytes([byte]))
            if sock.recv(65536) == b"":
                return True
        except TimeoutError:
            continue  # the server said nothing and still listens: go on
        except OSError:  # reset: closed
            return True
    return False


@pytest.mark.parametrize("port", ["proxy", "admin"])
def test_a_head_that_trickles_in_is_cut(make_sidecar: SidecarFactory, port: str) -> None:
    sidecar = make_sidecar(HEADER_READ_TIMEOUT="0.5")
    root = sidecar.root if port == "proxy" else sidecar.admin_url
    # 200 bytes at 0.05 s each would take 10 s: far past the 0.5 s allowed.
    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Padding: " + b"p" * 150 + b"\r\n\r\n"
    started = time.monotonic()
    with _open(root) as sock:
        assert _closed_while_trickling(sock, head, 0.05)
    assert time.monotonic() - started < WAIT_S
    assert sidecar.request("GET", "/healthz", admin=port == "admin").status == 200


def test_a_connection_that_never_sends_a_head_is_cut(make_sidecar: SidecarFactory) -> None:
    """As nginx's client_header_timeout: the first head is due from the connection's start
    (aiohttp alone would hold it for keepalive_timeout, about an hour)."""
    sidecar = make_sidecar(HEADER_READ_TIMEOUT="0.3")
    # A reset is a close too.
    with _open(sidecar.root) as sock, contextlib.suppress(ConnectionResetError):
        assert sock.recv(1) == b""  # closed by the server, well within WAIT_S


def _read_answer(sock: socket.socket) -> bytes:
    """The head of one answer with a Content-Length, read from a kept-alive connection (no
    byte of a following answer is consumed)."""
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        byte = sock.recv(1)
        assert byte, "connection closed before the answer"
        head += byte
    lengths = [line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")]
    remaining = int(lengths[0].split(b":")[1])
    while remaining:
        chunk = sock.recv(remaining)
        assert chunk, "connection closed inside the answer"
        remaining -= len(chunk)
    return head


def test_an_idle_keep_alive_connection_is_not_cut(make_sidecar: SidecarFactory) -> None:
    sidecar = make_sidecar(HEADER_READ_TIMEOUT="0.3")
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    with _open(sidecar.root) as sock:
        sock.sendall(request)
        assert b" 200 " in _read_answer(sock)
        time.sleep(1.0)  # idle, three times the head timeout
        sock.sendall(request)
        assert b" 200 " in _read_answer(sock)


def test_a_slowly_uploaded_body_is_not_cut(make_sidecar: SidecarFactory, stub: Stub) -> None:
    sidecar = make_sidecar(HEADER_READ_TIMEOUT="0.3")
    body = json.dumps(
        {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "slow body"}]}
    ).encode()
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer " + API_KEY.encode() + b"\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body)
    )
    with _open(sidecar.root) as sock:
        sock.sendall(head)
        for start in range(0, len(body), 8):  # about 1.2 s in all, 4x the head timeout
            time.sleep(0.1)
            sock.sendall(body[start : start + 8])
        assert b" 200 " in _read_answer(sock)
    assert stub.calls == 1


def test_pipelined_requests_are_all_answered(make_sidecar: SidecarFactory) -> None:
    """Heads that arrive together, or a next head in pieces, are not mistaken for slow ones."""
    sidecar = make_sidecar(HEADER_READ_TIMEOUT="0.3")
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    with _open(sidecar.root) as sock:
        sock.sendall(request * 2 + request[:10])
        assert b" 200 " in _read_answer(sock)
        assert b" 200 " in _read_answer(sock)
        sock.sendall(request[10:])  # the rest of the third head, well within the timeout
        assert b" 200 " in _read_answer(sock)
