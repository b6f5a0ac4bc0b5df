"""Request bodies (issue 19, items 7 and 9): a body that cannot be decoded is a 400 on both
ports, never a 500 or a logged traceback; the bytes of bodies held at once are bounded by
MAX_INFLIGHT_BODY_MB, beyond which a request is refused fast with 503 and Retry-After."""

from __future__ import annotations

import json
import logging
import threading
import time

import pytest

from tests.admin_support import TOKEN, TOKENS
from tests.fixtures.sidecar import HttpAnswer, Sidecar, SidecarFactory, Stub, http_request

CHAT = "/v1/chat/completions"


def chat_body(text: str) -> bytes:
    return json.dumps(
        {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]}
    ).encode()


def post(sidecar: Sidecar, path: str, body: bytes, **headers: str) -> HttpAnswer:
    return sidecar.request("POST", path, body, {"Content-Type": "application/json", **headers})


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_a_body_that_is_not_what_its_encoding_says_is_a_400(
    make_sidecar: SidecarFactory, stub: Stub, caplog: pytest.LogCaptureFixture, encoding: str
) -> None:
    sidecar = make_sidecar(ADMIN_TOKENS=TOKENS)
    with caplog.at_level(logging.DEBUG):
        answer = post(sidecar, CHAT, b"this is not compressed", **{"Content-Encoding": encoding})
        admin = http_request(
            sidecar.admin_url,
            "POST",
            "/api/admin/dashboard/cache/invalidate",
            b"neither is this",
            {"Authorization": f"Bearer {TOKEN}", "Content-Encoding": encoding},
        )
    for got in (answer, admin):
        assert got.status == 400, got.body
        error = got.json()["error"]
        assert (error["code"], error["param"]) == ("invalid_body", "Content-Encoding")
    assert stub.calls == 0
    assert "Traceback" not in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert post(sidecar, CHAT, chat_body("Hi.")).status == 200  # and the sidecar still answers


def test_bodies_held_at_once_are_bounded(make_sidecar: SidecarFactory, stub: Stub) -> None:
    """One 0.6 MB body is being answered (the upstream is slow); a second one would cross the
    1 MB bound: it is refused at once, and served once the first is done."""
    sidecar = make_sidecar(MAX_BODY_MB="1", MAX_INFLIGHT_BODY_MB="1")
    stub.fake.latency_ms = 1500
    big = "x" * 600_000
    first: list[HttpAnswer] = []
    worker = threading.Thread(target=lambda: first.append(post(sidecar, CHAT, chat_body(big))))
    worker.start()
    try:
        wait_until_held(sidecar)
        refused = post(sidecar, CHAT, chat_body(big + "y"))
    finally:
        worker.join(timeout=10)
    assert refused.status == 503
    assert refused.json()["error"]["code"] == "overloaded"
    assert int(refused.headers["retry-after"]) >= 1
    assert first and first[0].status == 200
    stub.fake.latency_ms = 0
    assert post(sidecar, CHAT, chat_body(big + "y")).status == 200
    assert sidecar.runtime.bodies.held == 0  # every request gave its bytes back


def wait_until_held(sidecar: Sidecar) -> None:
    """Until the first request's body is being held (it takes a moment to arrive)."""
    deadline = time.monotonic() + 5
    while sidecar.runtime.bodies.held == 0:
        assert time.monotonic() < deadline, "the first request never arrived"
        time.sleep(0.01)
