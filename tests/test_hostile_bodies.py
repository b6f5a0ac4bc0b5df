"""Hostile request bodies (issue 23, items 1, 2, 8 and 9): a compressed body is bounded by what
it inflates to, a pass-through forwards only the headers of what it sends, a client that hangs
up mid-body is a 499 at INFO, and a pass-through body unlike its Content-Encoding is a 400."""

from __future__ import annotations

import gzip
import json
import logging
import socket
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from aiohttp import web

from tests.fixtures.sidecar import (
    HttpAnswer,
    LoopThread,
    Sidecar,
    SidecarFactory,
    Stub,
    serve_double,
)

CHAT = "/v1/chat/completions"


def chat_body(text: str) -> bytes:
    return json.dumps(
        {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]}
    ).encode()


def bomb(inflated_mb: int) -> bytes:
    """A chat request of `inflated_mb` MB gzip-compressed to about a thousandth of that."""
    return gzip.compress(chat_body("a" * (inflated_mb << 20)), 9)


def post(sidecar: Sidecar, path: str, body: bytes, **headers: str) -> HttpAnswer:
    return sidecar.request("POST", path, body, {"Content-Type": "application/json", **headers})


@dataclass
class Received:
    headers: dict[str, str]  # names lower-cased
    body: bytes


@dataclass
class BodyRecorder:
    """An upstream that records each request's headers and body as they arrived."""

    url: str = ""
    seen: list[Received] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        headers = {k.lower(): v for k, v in request.headers.items()}
        self.seen.append(Received(headers, body))
        return web.json_response({"ok": True})


@pytest.fixture
def body_recorder(loop_thread: LoopThread) -> Iterator[BodyRecorder]:
    double = BodyRecorder()
    # Its own parser must not decode: the test checks the bytes as they were sent.
    app = web.Application(handler_args={"auto_decompress": False})
    app.router.add_route("*", "/{tail:.*}", double.handle)
    runner, double.url = loop_thread.run(serve_double(app))
    yield double
    loop_thread.run(runner.cleanup())


def test_a_gzip_bomb_is_refused_before_it_inflates(
    make_sidecar: SidecarFactory, stub: Stub, body_recorder: BodyRecorder
) -> None:
    """Item 1: 30 KB inflating to 30 MB (under MAX_BODY_MB) is a 413 on understood and
    pass-through routes alike; a compressed body inflating within bounds is still served, and
    every byte held is given back."""
    sidecar = make_sidecar()
    payload = bomb(30)
    assert len(payload) < 64 * 1024
    answer = post(sidecar, CHAT, payload, **{"Content-Encoding": "gzip"})
    assert answer.status == 413, answer.body
    assert answer.json()["error"]["code"] == "request_too_large"
    assert stub.calls == 0
    assert sidecar.runtime.bodies.held == 0
    small = post(sidecar, CHAT, gzip.compress(chat_body("Hi.")), **{"Content-Encoding": "gzip"})
    assert small.status == 200, small.body

    relay = make_sidecar(UPSTREAM_BASE_URL=body_recorder.url)
    answer = post(relay, "/v1/files", payload, **{"Content-Encoding": "gzip"})
    assert answer.status == 413, answer.body
    assert all(len(r.body) < (4 << 20) for r in body_recorder.seen)


def test_the_inflated_size_is_capped_by_max_body_mb(make_sidecar: SidecarFactory) -> None:
    """Item 1: a body compressing less than the ratio still stops at MAX_BODY_MB inflated."""
    sidecar = make_sidecar(MAX_BODY_MB="1")
    text = " ".join(str(n * 7919 % 100_003) for n in range(400_000))  # ~2.3 MB, ~4x
    answer = post(sidecar, CHAT, gzip.compress(chat_body(text)), **{"Content-Encoding": "gzip"})
    assert answer.status == 413, answer.body


def test_no_body_is_inflated_for_an_unknown_key(make_sidecar: SidecarFactory, stub: Stub) -> None:
    """Item 1: the credential rule comes first: a keyless bomb in managed mode is a 401."""
    sidecar = make_sidecar(UPSTREAM_API_KEY="sk-upstream", SIDECAR_KEYS="sk-sc=team")
    answer = post(sidecar, CHAT, bomb(30), **{"Content-Encoding": "gzip", "Authorization": ""})
    assert answer.status == 401, answer.body
    assert stub.calls == 0


def test_a_pass_through_forwards_only_what_it_sends(
    make_sidecar: SidecarFactory, body_recorder: BodyRecorder
) -> None:
    """Item 2: Expect is answered here and not forwarded; the inflated body goes upstream
    without its Content-Encoding, framed by its own length."""
    sidecar = make_sidecar(UPSTREAM_BASE_URL=body_recorder.url)
    content = b'{"purpose": "batch", "text": "' + b"hello " * 1000 + b'"}'
    headers = {"Content-Encoding": "deflate", "Expect": "100-continue"}
    started = time.monotonic()
    answer = post(sidecar, "/v1/files", zlib.compress(content), **headers)
    assert answer.status == 200, answer.body
    assert time.monotonic() - started < 5
    [seen] = body_recorder.seen
    assert seen.body == content
    assert "expect" not in seen.headers
    assert "content-encoding" not in seen.headers
    length = seen.headers.get("content-length")
    assert length is None or int(length) == len(content)


def test_a_client_that_hangs_up_mid_body_is_a_499_at_info(
    sidecar: Sidecar, caplog: pytest.LogCaptureFixture
) -> None:
    """Item 8: Content-Length 1000, 10 bytes sent, then the connection closed."""
    with caplog.at_level(logging.DEBUG):
        with socket.create_connection(("127.0.0.1", sidecar.port), timeout=5) as conn:
            conn.sendall(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                b"Authorization: Bearer sk-test\r\nContent-Type: application/json\r\n"
                b"Content-Length: 1000\r\n\r\n" + b'{"model": '
            )
            time.sleep(0.2)
        deadline = time.monotonic() + 5
        while _requests_counted(sidecar, "499") == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
    assert _requests_counted(sidecar, "499") == 1
    assert _requests_counted(sidecar, "500") == 0
    assert "Traceback" not in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    gone = [r for r in caplog.records if "closed" in r.getMessage().lower()]
    assert len(gone) == 1 and gone[0].levelno == logging.INFO
    assert sidecar.runtime.bodies.held == 0


def _requests_counted(sidecar: Sidecar, status: str) -> float:
    total = 0.0
    for metric in sidecar.runtime.metrics.registry.collect():
        for sample in metric.samples:
            if sample.name == "sidecache_requests_total" and sample.labels["status"] == status:
                total += sample.value
    return total


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_a_pass_through_body_unlike_its_encoding_is_a_400(
    make_sidecar: SidecarFactory, body_recorder: BodyRecorder, encoding: str
) -> None:
    """Item 9: the client's mistake, not the upstream's failure."""
    sidecar = make_sidecar(UPSTREAM_BASE_URL=body_recorder.url)
    answer = post(sidecar, "/v1/files", b"not gzip at all", **{"Content-Encoding": encoding})
    assert answer.status == 400, answer.body
    error = answer.json()["error"]
    assert (error["code"], error["param"]) == ("invalid_body", "Content-Encoding")
    assert post(sidecar, "/v1/files", b"plain").status == 200  # and the sidecar still answers
