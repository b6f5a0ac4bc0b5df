"""Every error the sidecar makes is OpenAI-shaped with the right status, the SDK raises its typed
exception, and a client's mistake is never a 500 (docs/design.md §7)."""

from __future__ import annotations

import http.client
import json
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import openai
import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from tests.fixtures.servers import free_port
from tests.fixtures.sidecar import API_KEY, HttpAnswer, Sidecar, SidecarFactory, Stub

CHAT = "/v1/chat/completions"
MESSAGES: list[Any] = [{"role": "user", "content": "Why is the sky blue?"}]
CHAT_BODY: dict[str, Any] = {"model": "gpt-4o-mini", "messages": MESSAGES}
UNDERSTOOD = ["/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/moderations"]


def openai_error(answer: HttpAnswer, status: int) -> dict[str, Any]:
    """The `error` object of an OpenAI-shaped error answer with `status`."""
    assert answer.status == status, answer.body[:300]
    assert answer.headers["content-type"].startswith("application/json")
    payload = answer.json()
    assert set(payload) == {"error"}
    error: dict[str, Any] = payload["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["type"], str) and error["type"]
    return error


def raw_post(sidecar: Sidecar, path: str, body: bytes) -> HttpAnswer:
    return sidecar.request("POST", path, body, {"Content-Type": "application/json"})


def test_malformed_json_is_400(sidecar: Sidecar, stub: Stub) -> None:
    for path in UNDERSTOOD:
        error = openai_error(raw_post(sidecar, path, b'{"model": "gpt-4o-mini",'), 400)
        assert error["type"] == "invalid_request_error"
        assert error["code"] == "invalid_json"
    assert stub.calls == 0


@pytest.mark.parametrize("body", [b"[1, 2]", b'"text"', b"42", b"null", b""])
def test_body_not_an_object_is_400(sidecar: Sidecar, body: bytes) -> None:
    assert openai_error(raw_post(sidecar, CHAT, body), 400)["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"stream": "yes"}, "stream"),
        ({"model": 5}, "model"),
        ({"temperature": "hot"}, "temperature"),
        ({"seed": "one"}, "seed"),
        ({"stream_options": {"include_usage": "please"}}, "stream_options.include_usage"),
    ],
)
def test_wrong_types_are_400_naming_the_param(
    sidecar: Sidecar, stub: Stub, fields: dict[str, Any], param: str
) -> None:
    answer = sidecar.request("POST", CHAT, {**CHAT_BODY, **fields})
    assert openai_error(answer, 400)["param"] == param
    with pytest.raises(openai.BadRequestError) as caught:
        sidecar.client().chat.completions.create(**{**CHAT_BODY, **fields})
    assert caught.value.param == param
    assert stub.calls == 0


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (CHAT, {"messages": MESSAGES}),
        ("/v1/completions", {"prompt": "hi"}),
        ("/v1/embeddings", {"input": "hi"}),
    ],
)
def test_missing_model_is_400(sidecar: Sidecar, path: str, body: dict[str, Any]) -> None:
    assert openai_error(sidecar.request("POST", path, body), 400)["param"] == "model"


HUGE = 2**64  # valid JSON, but outside what the canonical key encoding can hold


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (CHAT, {**CHAT_BODY, "seed": HUGE}),
        (CHAT, {**CHAT_BODY, "logit_bias": {"42": -HUGE}}),
        ("/v1/embeddings", {"model": "text-embedding-3-small", "input": [[1, HUGE]]}),
        ("/v1/embeddings", {"model": "text-embedding-3-small", "input": "x", "dimensions": HUGE}),
        ("/v1/moderations", {"input": "hi", "extra": [HUGE]}),
    ],
    ids=["seed", "unknown-field", "token", "dimensions", "moderation"],
)
def test_integers_beyond_64_bits_are_400(
    sidecar: Sidecar, stub: Stub, path: str, body: dict[str, Any]
) -> None:
    assert openai_error(sidecar.request("POST", path, body), 400)["code"] == "invalid_value"
    assert stub.calls == 0


def test_deeply_nested_body_is_400(sidecar: Sidecar) -> None:
    depth = 5000
    body = b'{"model": "gpt-4o-mini", "messages": ' + b"[" * depth + b"]" * depth + b"}"
    assert openai_error(raw_post(sidecar, CHAT, body), 400)["code"] == "invalid_json"


def chunked_post(sidecar: Sidecar, path: str, size: int) -> HttpAnswer:
    """POST `size` bytes with chunked transfer encoding (no Content-Length)."""

    def pieces() -> Iterator[bytes]:
        yield b'{"model": "gpt-4o-mini", "pad": "'
        for _ in range(size // 65536):
            yield b"x" * 65536
        yield b'"}'

    host, _, port = sidecar.root.removeprefix("http://").partition(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
        connection.request("POST", path, body=pieces(), headers=headers, encode_chunked=True)
        answer = connection.getresponse()
        received = {name.lower(): value for name, value in answer.getheaders()}
        return HttpAnswer(answer.status, received, answer.read())
    finally:
        connection.close()


@pytest.mark.parametrize("path", ["/v1/embeddings", "/v1/files"], ids=["understood", "passthrough"])
@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_body_over_the_limit_is_413(
    make_sidecar: SidecarFactory, stub: Stub, path: str, framing: str
) -> None:
    sidecar = make_sidecar(MAX_BODY_MB="1")
    size = 3 * 1024 * 1024 // 2
    if framing == "chunked":
        answer = chunked_post(sidecar, path, size)
    else:
        body = json.dumps({"model": "text-embedding-3-small", "input": "x" * size}).encode()
        answer = raw_post(sidecar, path, body)
    error = openai_error(answer, 413)
    assert error["code"] == "request_too_large"
    assert "1 MB" in error["message"]
    if path in UNDERSTOOD:
        assert stub.calls == 0
    # The sidecar is fine afterwards, and a body under the limit goes through.
    small = sidecar.request("POST", path, {"model": "text-embedding-3-small", "input": "small"})
    assert small.status == (200 if path in UNDERSTOOD else 404)


def test_sdk_raises_on_413(make_sidecar: SidecarFactory) -> None:
    client = make_sidecar(MAX_BODY_MB="1").client()
    with pytest.raises(openai.APIStatusError) as caught:
        client.embeddings.create(model="text-embedding-3-small", input="y" * 2_000_000)
    assert caught.value.status_code == 413
    assert caught.value.code == "request_too_large"


@pytest.mark.parametrize("admin", [False, True], ids=["proxy", "admin"])
def test_unknown_route_is_404(sidecar: Sidecar, admin: bool) -> None:
    for method, path in (("GET", "/nope"), ("POST", "/api/whatever"), ("GET", "/v2/models")):
        error = openai_error(sidecar.request(method, path, admin=admin), 404)
        assert error["code"] == "unknown_url"


def closed_port_url() -> str:
    return f"http://127.0.0.1:{free_port()}/v1"


Call = Callable[[openai.OpenAI], object]
SDK_CALLS: dict[str, Call] = {
    "chat": lambda c: c.chat.completions.create(**CHAT_BODY),
    "chat-stream": lambda c: list(c.chat.completions.create(**CHAT_BODY, stream=True)),
    "completions": lambda c: c.completions.create(model="gpt-3.5-turbo-instruct", prompt="hi"),
    "embeddings": lambda c: c.embeddings.create(model="text-embedding-3-small", input="hi"),
    "moderations": lambda c: c.moderations.create(input="hi"),
    "passthrough": lambda c: c.models.list(),
}


@pytest.mark.parametrize("call", SDK_CALLS.values(), ids=SDK_CALLS.keys())
def test_upstream_unreachable_is_502(make_sidecar: SidecarFactory, call: Call) -> None:
    sidecar = make_sidecar(UPSTREAM_BASE_URL=closed_port_url())
    with pytest.raises(openai.InternalServerError) as caught:
        call(sidecar.client())
    assert caught.value.status_code == 502
    assert caught.value.code == "upstream_unreachable"
    assert caught.value.type == "upstream_error"


@pytest.mark.parametrize("call", SDK_CALLS.values(), ids=SDK_CALLS.keys())
def test_upstream_timeout_is_504(make_sidecar: SidecarFactory, stub: Stub, call: Call) -> None:
    sidecar = make_sidecar(UPSTREAM_READ_TIMEOUT="0.3")
    stub.fake.hang = True
    started = time.monotonic()
    with pytest.raises(openai.InternalServerError) as caught:
        call(sidecar.client())
    assert caught.value.status_code == 504
    assert caught.value.code == "upstream_timeout"
    assert time.monotonic() - started < 5
    stub.fake.hang = False
    assert sidecar.request("GET", "/v1/models").status == 200


FAILED_MISSES = {
    "chat": (CHAT, CHAT_BODY),
    "moderation": ("/v1/moderations", {"input": "hi"}),
    "one embedding": ("/v1/embeddings", {"model": "text-embedding-3-small", "input": "hi"}),
    "embeddings": ("/v1/embeddings", {"model": "text-embedding-3-small", "input": ["a", "b"]}),
}


@pytest.mark.parametrize("path, body", FAILED_MISSES.values(), ids=FAILED_MISSES.keys())
def test_a_miss_that_failed_upstream_still_says_miss(
    make_sidecar: SidecarFactory, stub: Stub, path: str, body: dict[str, Any]
) -> None:
    """The sidecar's own failure after the cache missed keeps the miss's cache headers, on
    every understood endpoint alike (the error middleware adds them)."""
    sidecar = make_sidecar(UPSTREAM_READ_TIMEOUT="0.3")
    stub.fake.hang = True
    answer = sidecar.request("POST", path, body, {"Authorization": f"Bearer {API_KEY}"})
    assert openai_error(answer, 504)["code"] == "upstream_timeout"
    assert answer.headers["x-cache"] == "MISS"
    assert len(answer.headers["x-cache-key"]) == 16
    stub.fake.hang = False


def test_stream_stalling_mid_way_fails_and_is_not_stored(
    make_sidecar: SidecarFactory, stub: Stub
) -> None:
    sidecar = make_sidecar(UPSTREAM_READ_TIMEOUT="0.3")
    stub.fake.chunk_delay_ms = 600
    client = sidecar.client()
    with pytest.raises(openai.APIError):
        list(client.chat.completions.create(**CHAT_BODY, stream=True))
    stub.fake.chunk_delay_ms = 0
    raw = client.chat.completions.with_raw_response.create(**CHAT_BODY, stream=True)
    assert raw.headers["x-cache"] == "MISS"


@pytest.mark.parametrize("call", SDK_CALLS.values(), ids=SDK_CALLS.keys())
@pytest.mark.parametrize(
    ("status", "error"), [(500, openai.InternalServerError), (429, openai.RateLimitError)]
)
def test_upstream_errors_pass_through_with_retry_after(
    sidecar: Sidecar, stub: Stub, call: Call, status: int, error: type[openai.APIStatusError]
) -> None:
    stub.fake.fail_next, stub.fake.fail_status, stub.fake.fail_retry_after = 1, status, "11"
    with pytest.raises(error) as caught:
        call(sidecar.client())
    assert caught.value.status_code == status
    assert caught.value.response.headers["retry-after"] == "11"
    assert "fake upstream" in caught.value.message  # the upstream's own error, unchanged
    call(sidecar.client())  # and nothing broken was stored
    assert stub.calls == 2


def stream_and_leave(sidecar: Sidecar, headers: str = "") -> None:
    """Sends a streaming chat request on a raw socket, reads the first event and hangs up."""
    body = json.dumps({**CHAT_BODY, "stream": True}).encode()
    host, _, port = sidecar.root.removeprefix("http://").partition(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        head = (
            f"POST {CHAT} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {API_KEY}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n{headers}\r\n"
        )
        sock.sendall(head.encode() + body)
        received = b""
        while b"data: " not in received:
            data = sock.recv(4096)
            assert data, "the sidecar closed the stream before the first event"
            received += data
    assert received.startswith(b"HTTP/1.1 200")


def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> float:
    """Polls `condition` until true; returns the seconds it took (fails after `timeout`)."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout, "condition not met in time"
        time.sleep(0.01)
    return time.monotonic() - started


def test_client_leaving_mid_stream_still_stores_the_answer(sidecar: Sidecar, stub: Stub) -> None:
    stub.fake.chunk_delay_ms = 20
    stream_and_leave(sidecar)
    wait_for(lambda: stub.fake.in_flight == 0 and sidecar.runtime.store.usage()[0] == 1)
    stub.fake.chunk_delay_ms = 0
    client = sidecar.client()
    assert client.models.list().data  # the sidecar keeps answering
    raw = client.chat.completions.with_raw_response.create(**CHAT_BODY, stream=True)
    assert raw.headers["x-cache"] == "HIT"
    text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
    fresh = client.chat.completions.create(**CHAT_BODY, extra_headers={"Cache-Control": "no-store"})
    assert text == fresh.choices[0].message.content
    assert stub.fake.calls[CHAT] == 2


def test_client_leaving_a_no_store_stream_abandons_the_upstream(
    sidecar: Sidecar, stub: Stub
) -> None:
    stub.fake.chunk_delay_ms = 100  # the whole answer takes about 2.7 s
    stream_and_leave(sidecar, "Cache-Control: no-store\r\n")
    assert wait_for(lambda: stub.fake.in_flight == 0, timeout=1.5) < 1.5
    assert sidecar.runtime.store.usage()[0] == 0
    stub.fake.chunk_delay_ms = 0
    assert sidecar.request("POST", CHAT, CHAT_BODY).headers["x-cache"] == "MISS"


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
FIELDS = ["model", "messages", "prompt", "input", "stream", "stream_options", "temperature"]
FIELDS += ["seed", "dimensions", "encoding_format", "user", "n", "max_tokens"]
# A valid request per route, so that random changes to a few fields also reach the upstream.
VALID: dict[str, dict[str, Any]] = {
    CHAT: CHAT_BODY,
    "/v1/completions": {"model": "gpt-3.5-turbo-instruct", "prompt": "hi"},
    "/v1/embeddings": {"model": "text-embedding-3-small", "input": "hi"},
    "/v1/moderations": {"input": "hi"},
}


def encode(value: Any) -> bytes:
    return json.dumps(value).encode()


def bodies(path: str) -> st.SearchStrategy[bytes]:
    changes = st.dictionaries(st.sampled_from(FIELDS), JSON, max_size=2)
    return (
        changes.map(lambda extra: encode({**VALID[path], **extra}))
        | st.dictionaries(st.sampled_from(FIELDS), JSON, max_size=6).map(encode)
        | JSON.map(encode)
        | st.binary(max_size=64)
    )


REQUESTS = st.sampled_from(UNDERSTOOD).flatmap(lambda p: st.tuples(st.just(p), bodies(p)))


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(request=REQUESTS)
@example(request=(CHAT, encode({**CHAT_BODY, "n": -(2**70)})))
@example(request=("/v1/embeddings", b'{"model": "m", "input": ' + b"[" * 2000 + b"]" * 2000 + b"}"))
def test_random_bodies_never_get_a_500(sidecar: Sidecar, request: tuple[str, bytes]) -> None:
    path, body = request
    answer = raw_post(sidecar, path, body)
    event(f"status {answer.status}")
    # 404: the upstream's model_not_found for a model it does not list, relayed as it is
    assert answer.status in {200, 400, 404, 413}, (answer.status, answer.body[:300])
    if answer.status != 200:
        openai_error(answer, answer.status)
