"""Every other /v1 route is passed through unchanged and streamed, and only the right headers
cross the proxy (docs/design.md §3, issue 2 item 3)."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import http.client
import json
import os
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import openai
import pytest
from aiohttp import web

from tests.fixtures.sidecar import (
    API_KEY,
    HttpAnswer,
    LoopThread,
    Sidecar,
    SidecarFactory,
    Stub,
    http_request,
    serve_double,
)
from tests.recorder_support import Recorder, recorder

__all__ = ["recorder"]  # the fixture, used by name

MESSAGES: list[Any] = [{"role": "user", "content": "Name three prime numbers."}]
GZIPPED = gzip.compress(b'{"object": "list", "data": ["compressed", "as", "sent"]}', mtime=0)


@dataclass
class Echo:
    """An upstream of the test's own, for what the fake does not show: the query string and
    raw bytes of a request, fixed compressed bytes, and a stream the test releases."""

    url: str = ""
    seen: list[dict[str, Any]] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)
    finished: threading.Event = field(default_factory=threading.Event)

    async def echo(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.seen.append(
            {
                "method": request.method,
                "raw_path": request.raw_path,
                "headers": {k.lower(): v for k, v in request.headers.items()},
                "length": len(body),
                "sha256": hashlib.sha256(body).hexdigest(),
            }
        )
        return web.json_response({"length": len(body)})

    async def gzipped(self, request: web.Request) -> web.Response:
        headers = {"Content-Encoding": "gzip", "Content-Type": "application/json"}
        return web.Response(body=GZIPPED, headers=headers)

    async def stream(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/plain"})
        await response.prepare(request)
        await response.write(b"first\n")
        for _ in range(1000):  # at most 10 s
            if self.release.is_set():
                break
            await asyncio.sleep(0.01)
        await response.write(b"second\n")
        await response.write_eof()
        self.finished.set()
        return response


@pytest.fixture
def echo(loop_thread: LoopThread) -> Iterator[Echo]:
    double = Echo()
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_get("/v1/gzipped", double.gzipped)
    app.router.add_get("/v1/stream", double.stream)
    app.router.add_route("*", "/v1/{tail:.*}", double.echo)
    runner, double.url = loop_thread.run(serve_double(app))
    yield double
    double.release.set()
    loop_thread.run(runner.cleanup())


def direct(stub: Stub, method: str, path: str, headers: dict[str, str] | None = None) -> Any:
    return http_request(stub.url.removesuffix("/v1"), method, path, None, headers)


def test_models_pass_through(sidecar: Sidecar, stub: Stub) -> None:
    client = sidecar.client()
    listed = client.models.list()
    expected = direct(stub, "GET", "/v1/models").json()
    assert [m.id for m in listed.data] == [m["id"] for m in expected["data"]]
    model = client.models.retrieve("gpt-4o-mini")
    assert (model.id, model.owned_by) == ("gpt-4o-mini", "system")
    assert [(r.method, r.path) for r in stub.fake.requests] == [
        ("GET", "/v1/models"),  # through the sidecar
        ("GET", "/v1/models"),  # direct
        ("GET", "/v1/models/gpt-4o-mini"),
    ]
    # Never cached: every call goes upstream.
    client.models.list()
    assert stub.fake.calls["/v1/models"] == 3


@pytest.mark.parametrize(
    "path",
    [
        "/v1/files?purpose=fine-tune&limit=2&after=file%20abc&flag",
        "/v1/files?q=a%2Bb&plus=a+b&amp=%26&empty=",
        "/v1/files/file%2Fabc%20x/content?x=%C3%A4",
    ],
    ids=["query", "escapes", "escaped-path"],
)
def test_path_and_query_are_kept_as_sent(
    make_sidecar: SidecarFactory, echo: Echo, path: str
) -> None:
    sidecar = make_sidecar(UPSTREAM_BASE_URL=echo.url)
    assert sidecar.request("GET", path).status == 200
    assert echo.seen[-1]["raw_path"] == path


def test_upstream_404_passes_through_unchanged(sidecar: Sidecar, stub: Stub) -> None:
    for path in ("/v1/models/no-such-model", "/v1/no/such/route"):
        through = sidecar.request("GET", path)
        upstream = direct(stub, "GET", path)
        assert through.status == upstream.status == 404
        assert through.body == upstream.body
        assert through.headers["content-type"] == upstream.headers["content-type"]
    with pytest.raises(openai.NotFoundError) as caught:
        sidecar.client().models.retrieve("no-such-model")
    assert caught.value.code == "model_not_found"


def test_gzip_pass_through_is_byte_identical(
    make_sidecar: SidecarFactory, stub: Stub, echo: Echo
) -> None:
    sidecar = make_sidecar(UPSTREAM_BASE_URL=echo.url)
    answer = sidecar.request("GET", "/v1/gzipped", headers={"Accept-Encoding": "gzip"})
    assert answer.headers["content-encoding"] == "gzip"
    assert answer.body == GZIPPED

    stub.fake.gzip = True
    plain = make_sidecar()
    through = plain.request("GET", "/v1/models", headers={"Accept-Encoding": "gzip"})
    assert through.status == 200
    assert through.headers["content-encoding"] == "gzip"
    assert int(through.headers["content-length"]) == len(through.body)
    assert stub.fake.requests[-1].headers["accept-encoding"] == "gzip"
    uncompressed = direct(stub, "GET", "/v1/models", {"Accept-Encoding": "identity"})
    assert "content-encoding" not in uncompressed.headers
    assert gzip.decompress(through.body) == uncompressed.body


def raw_get(sidecar: Sidecar, path: str, extra_headers: str = "") -> tuple[str, bytes]:
    """A GET on a raw socket, so that no header is added that the test did not write."""
    host, _, port = sidecar.root.removeprefix("http://").partition(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        request = (
            f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {API_KEY}\r\n"
            f"Connection: close\r\n{extra_headers}\r\n"
        )
        sock.sendall(request.encode())
        received = b""
        while data := sock.recv(65536):
            received += data
    head, _, body = received.partition(b"\r\n\r\n")
    return head.decode("latin-1").lower(), body


def test_no_encoding_the_client_did_not_ask_for(sidecar: Sidecar, stub: Stub) -> None:
    stub.fake.gzip = True
    head, _ = raw_get(sidecar, "/v1/models")
    assert head.startswith("http/1.1 200")
    assert "content-encoding" not in head
    assert "accept-encoding" not in stub.fake.requests[-1].headers


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_understood_route_answers_are_decompressed(
    sidecar: Sidecar, stub: Stub, stream: bool
) -> None:
    stub.fake.gzip = True
    client = sidecar.client()
    if stream:
        streamed = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=MESSAGES, stream=True
        )
        headers = streamed.headers
        text = "".join(c.choices[0].delta.content or "" for c in streamed.parse() if c.choices)
    else:
        whole = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=MESSAGES
        )
        headers = whole.headers
        text = whole.parse().choices[0].message.content or ""
    assert "gzip" in stub.fake.requests[-1].headers["accept-encoding"]
    assert "content-encoding" not in headers
    assert text
    embedded = client.embeddings.create(model="text-embedding-3-small", input=["zipped"])
    assert len(embedded.data[0].embedding) == 8
    assert client.moderations.create(input="zipped").results[0].flagged is False
    # What was stored is the decompressed answer: a HIT reads it back.
    again = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MESSAGES)
    assert again.headers["x-cache"] == "HIT"
    assert again.parse().choices[0].message.content == text


HOP_BY_HOP = {
    "Connection": "x-foo",
    "X-Foo": "listed in Connection",
    "Keep-Alive": "timeout=5",
    "TE": "trailers",
    "Upgrade": "h2c",
    "Proxy-Authorization": "Basic c2VjcmV0OnNlY3JldA==",
}
SIDECAR_ONLY = {
    "X-Persona-Experience": "beginner",
    "X-Persona-Interests": "chess,music",
    "X-Cache-Scope": "user",
    "X-Cache-Persona-Dims": "experience",
    "X-User-Id": "learner-7",
    "X-Priority": "high",
    "Cache-Control": "no-cache",
}
FORWARDED = {
    "OpenAI-Organization": "org-test",
    "OpenAI-Project": "proj-test",
    "X-Stainless-Custom": "kept",
    "X-Request-Trace": "trace-1",
}
ROUTES: list[tuple[str, str, dict[str, Any] | None]] = [
    ("GET", "/v1/models", None),
    ("POST", "/v1/files", {"purpose": "batch"}),
    ("POST", "/v1/chat/completions", {"model": "gpt-4o-mini", "messages": MESSAGES}),
    (
        "POST",
        "/v1/chat/completions",
        {"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True},
    ),
    ("POST", "/v1/completions", {"model": "gpt-3.5-turbo-instruct", "prompt": "hi"}),
    ("POST", "/v1/embeddings", {"model": "text-embedding-3-small", "input": "hi"}),
    ("POST", "/v1/moderations", {"input": "hi"}),
]


@pytest.mark.parametrize(("method", "path", "body"), ROUTES)
def test_which_headers_reach_the_upstream(
    sidecar: Sidecar, stub: Stub, method: str, path: str, body: dict[str, Any] | None
) -> None:
    headers = {**HOP_BY_HOP, **SIDECAR_ONLY, **FORWARDED}
    answer = sidecar.request(method, path, body, headers)
    assert answer.status in (200, 404)
    received = stub.fake.requests[-1].headers
    assert stub.fake.requests[-1].path == path
    for name in [*HOP_BY_HOP, *SIDECAR_ONLY]:
        assert name.lower() not in received, name
    for name, value in FORWARDED.items():
        assert received[name.lower()] == value
    assert received["authorization"] == f"Bearer {API_KEY}"


def test_sdk_headers_reach_the_upstream(sidecar: Sidecar, stub: Stub) -> None:
    client = sidecar.client(**{"OpenAI-Organization": "org-sdk"})
    client.models.list()
    client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    for recorded in stub.fake.requests:
        assert recorded.headers["openai-organization"] == "org-sdk"
        stainless = {k for k in recorded.headers if k.startswith("x-stainless-")}
        assert {"x-stainless-lang", "x-stainless-retry-count"} <= stainless


def test_post_body_arrives_intact(sidecar: Sidecar, stub: Stub) -> None:
    payload = {"purpose": "batch", "blob": os.urandom(1024 * 1024).hex()}  # 2 MB of JSON
    answer = sidecar.request("POST", "/v1/files", payload)
    assert answer.status == 404  # the fake knows no /v1/files, and says so
    assert stub.fake.requests[-1].method == "POST"
    assert stub.fake.requests[-1].body == payload


def test_binary_body_arrives_byte_for_byte(make_sidecar: SidecarFactory, echo: Echo) -> None:
    sidecar = make_sidecar(UPSTREAM_BASE_URL=echo.url)
    blob = os.urandom(2 * 1024 * 1024 + 7)
    headers = {"Content-Type": "application/octet-stream"}
    answer = sidecar.request("PUT", "/v1/uploads/up_1/parts", blob, headers)
    assert answer.status == 200
    assert (echo.seen[-1]["method"], echo.seen[-1]["length"]) == ("PUT", len(blob))
    assert echo.seen[-1]["sha256"] == hashlib.sha256(blob).hexdigest()
    assert echo.seen[-1]["headers"]["content-type"] == "application/octet-stream"


def test_pass_through_answer_is_streamed(make_sidecar: SidecarFactory, echo: Echo) -> None:
    """The first bytes reach the client while the upstream still holds the rest back."""
    sidecar = make_sidecar(UPSTREAM_BASE_URL=echo.url)
    host, _, port = sidecar.root.removeprefix("http://").partition(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        connection.request("GET", "/v1/stream", headers={"Authorization": f"Bearer {API_KEY}"})
        answer = connection.getresponse()
        assert answer.status == 200
        assert answer.read(6) == b"first\n"  # times out (fails) if the sidecar buffers
        assert not echo.finished.is_set()
        echo.release.set()
        assert answer.read() == b"second\n"
    finally:
        connection.close()


def test_delete_passes_through(sidecar: Sidecar, stub: Stub) -> None:
    deleted: HttpAnswer = sidecar.request("DELETE", "/v1/files/file-1")
    assert deleted.status == 404
    assert json.loads(deleted.body)["error"]["code"] == "unknown_url"
    assert (stub.fake.requests[-1].method, stub.fake.requests[-1].path) == (
        "DELETE",
        "/v1/files/file-1",
    )


ESCAPES = [
    "/v1/%2e%2e/%2e%2e/internal/debug",
    "/v1/%2E%2E/internal/debug",
    "/v1/models/%2e%2e/%2e%2e/%2e%2e/internal",
    "/v1/../internal/debug",
    "/v1/a/..%2f..%2finternal",
    "/v1/%252e%252e/%252e%252e/internal",  # one decoding more than HTTP asks for
    "/v1/..%5c..%5cinternal",  # `\`, which some servers take for `/`
]


@pytest.mark.parametrize("managed", [False, True], ids=["pass-through", "managed"])
@pytest.mark.parametrize("path", ESCAPES)
def test_a_path_that_leaves_the_base_path_is_refused(
    make_sidecar: SidecarFactory, recorder: Recorder, path: str, managed: bool
) -> None:
    """Issue 19 item 2: `/v1/%2e%2e/%2e%2e/internal/debug` reached the upstream as
    `GET /internal/debug`, in managed mode with the upstream's own key."""
    env = {"UPSTREAM_API_KEY": "sk-upstream", "SIDECAR_KEYS": f"{API_KEY}=team"} if managed else {}
    sidecar = make_sidecar(UPSTREAM_BASE_URL=recorder.url, **env)
    answer = sidecar.request("GET", path)
    assert answer.status == 400
    assert answer.json()["error"]["type"] == "invalid_request_error"
    assert recorder.seen == []


def test_dot_segments_that_stay_under_the_base_path_pass(
    make_sidecar: SidecarFactory, recorder: Recorder
) -> None:
    sidecar = make_sidecar(UPSTREAM_BASE_URL=recorder.url)
    for path in ("/v1/files/file..abc", "/v1/models/%2e%2e/files", "/v1/a%2fb"):
        assert sidecar.request("GET", path).status == 200
    assert all(s.raw_path.startswith("/v1/") for s in recorder.seen)
    assert len(recorder.seen) == 3
