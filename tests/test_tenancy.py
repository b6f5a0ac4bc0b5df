"""Tenancy: whose entries a request may read, which credential goes upstream, and that no secret
ever leaks into logs, cache keys, metrics or answers (docs/design.md §3, issue 2 item 8)."""

from __future__ import annotations

import http.client
import json
import logging
import socket
import time
from typing import Any

import openai
import pytest

from tests.fixtures.servers import RedisServer
from tests.fixtures.sidecar import (
    API_KEY,
    OTHER_API_KEY,
    HttpAnswer,
    Sidecar,
    SidecarFactory,
    Stub,
)

UPSTREAM_KEY = "sk-upstream-secret"
KEY_ONE, KEY_TWO = "sk-sc-one", "sk-sc-two"
MANAGED = {"UPSTREAM_API_KEY": UPSTREAM_KEY, "SIDECAR_KEYS": f"{KEY_ONE}=team-a,{KEY_TWO}=team-b"}
MESSAGES: list[Any] = [{"role": "user", "content": "Explain recursion to me."}]

# One request per understood endpoint: (path, body).
UNDERSTOOD: list[tuple[str, dict[str, Any]]] = [
    ("/v1/chat/completions", {"model": "gpt-4o-mini", "messages": MESSAGES}),
    ("/v1/chat/completions", {"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True}),
    ("/v1/completions", {"model": "gpt-3.5-turbo-instruct", "prompt": "Say hi"}),
    ("/v1/embeddings", {"model": "text-embedding-3-small", "input": ["tenant", "bound"]}),
    ("/v1/moderations", {"input": "tenant bound"}),
]
IDS = ["chat", "chat-stream", "completions", "embeddings", "moderations"]


def post(sidecar: Sidecar, path: str, body: dict[str, Any], key: str | None) -> HttpAnswer:
    """A POST with `Authorization: Bearer key`, or with no Authorization at all."""
    return send(sidecar, "POST", path, body, key)


def send(
    sidecar: Sidecar,
    method: str,
    path: str,
    body: dict[str, Any] | None,
    key: str | None,
    headers: dict[str, str] | None = None,
) -> HttpAnswer:
    host, _, port = sidecar.root.removeprefix("http://").partition(":")
    all_headers = {"Content-Type": "application/json", **(headers or {})}
    if key is not None:
        all_headers["Authorization"] = f"Bearer {key}"
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        payload = json.dumps(body).encode() if body is not None else None
        connection.request(method, path, body=payload, headers=all_headers)
        answer = connection.getresponse()
        received = {name.lower(): value for name, value in answer.getheaders()}
        return HttpAnswer(answer.status, received, answer.read())
    finally:
        connection.close()


# Pass-through mode (the default) -------------------------------------------------------------


@pytest.mark.parametrize(("path", "body"), UNDERSTOOD, ids=IDS)
def test_two_api_keys_never_share_an_entry(
    any_sidecar: Sidecar, stub: Stub, path: str, body: dict[str, Any]
) -> None:
    assert post(any_sidecar, path, body, API_KEY).headers["x-cache"] == "MISS"
    assert post(any_sidecar, path, body, API_KEY).headers["x-cache"] == "HIT"
    other = post(any_sidecar, path, body, OTHER_API_KEY)
    assert other.status == 200
    assert other.headers["x-cache"] == "MISS"
    assert stub.calls == 2
    assert post(any_sidecar, path, body, OTHER_API_KEY).headers["x-cache"] == "HIT"


def test_authorization_reaches_the_upstream_unchanged(sidecar: Sidecar, stub: Stub) -> None:
    odd = "Bearer sk-Mixed-Case_key.with/odd+chars=="
    for path, body in UNDERSTOOD:
        send(sidecar, "POST", path, body, None, {"Authorization": odd})
        assert stub.fake.requests[-1].headers["authorization"] == odd
    send(sidecar, "GET", "/v1/models", None, None, {"Authorization": odd})
    assert stub.fake.requests[-1].headers["authorization"] == odd


@pytest.mark.parametrize(("path", "body"), UNDERSTOOD, ids=IDS)
def test_no_authorization_is_answered_by_the_upstream_and_not_cached(
    any_sidecar: Sidecar, stub: Stub, path: str, body: dict[str, Any]
) -> None:
    for _ in range(2):
        answer = post(any_sidecar, path, body, None)
        assert answer.status == 401
        assert "API key" in answer.json()["error"]["message"]  # the upstream's own words
        assert "authorization" not in stub.fake.requests[-1].headers
    assert stub.calls == 2


def test_a_wrong_key_never_reads_a_right_keys_entry(sidecar: Sidecar, stub: Stub) -> None:
    stub.fake.required_key = API_KEY
    right = sidecar.client()
    right.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    with pytest.raises(openai.AuthenticationError):
        sidecar.client(api_key=OTHER_API_KEY).chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES
        )
    assert stub.calls == 2


# Managed mode ---------------------------------------------------------------------------------


@pytest.fixture
def managed(make_sidecar: SidecarFactory, stub: Stub) -> Sidecar:
    stub.fake.required_key = UPSTREAM_KEY
    return make_sidecar(**MANAGED)


def test_sidecar_key_works_and_only_the_upstream_key_goes_upstream(
    managed: Sidecar, stub: Stub
) -> None:
    client = managed.client(api_key=KEY_ONE)
    text = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert text.choices[0].message.content
    assert client.embeddings.create(model="text-embedding-3-small", input="x").data
    assert client.moderations.create(input="x").results
    assert [m.id for m in client.models.list().data]
    assert stub.calls == 4
    for recorded in stub.fake.requests:
        assert recorded.headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
        assert KEY_ONE not in json.dumps(recorded.headers)


@pytest.mark.parametrize(("path", "body"), UNDERSTOOD, ids=IDS)
def test_two_sidecar_keys_never_share_an_entry(
    managed: Sidecar, stub: Stub, path: str, body: dict[str, Any]
) -> None:
    assert post(managed, path, body, KEY_ONE).headers["x-cache"] == "MISS"
    assert post(managed, path, body, KEY_ONE).headers["x-cache"] == "HIT"
    assert post(managed, path, body, KEY_TWO).headers["x-cache"] == "MISS"
    assert post(managed, path, body, KEY_TWO).headers["x-cache"] == "HIT"
    assert stub.calls == 2


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer sk-sc-three", f"Bearer {UPSTREAM_KEY}", f"Basic {KEY_ONE}", "Bearer "],
    ids=["missing", "unknown", "upstream-key", "not-bearer", "empty"],
)
def test_unknown_or_missing_sidecar_key_is_401(
    managed: Sidecar, stub: Stub, authorization: str | None
) -> None:
    headers = {"Authorization": authorization} if authorization is not None else {}
    for path, body in [*UNDERSTOOD, ("/v1/models", None), ("/v1/files", {"purpose": "x"})]:
        method = "GET" if body is None else "POST"
        answer = send(managed, method, path, body, None, headers)
        assert answer.status == 401, path
        error = answer.json()["error"]
        assert (error["type"], error["code"]) == ("authentication_error", "invalid_api_key")
    assert stub.calls == 0


def test_sdk_raises_authentication_error(managed: Sidecar, stub: Stub) -> None:
    with pytest.raises(openai.AuthenticationError) as caught:
        managed.client(api_key="sk-not-a-sidecar-key").chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES
        )
    assert caught.value.code == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        managed.client(api_key="sk-not-a-sidecar-key").models.list()
    assert stub.calls == 0


# Secrets -------------------------------------------------------------------------------------

USER_ID = "learner-uid-5521"
PROMPT = "PROMPTTEXT photosynthesis seventy-seven"
SECRETS = [API_KEY, KEY_ONE, KEY_TWO, UPSTREAM_KEY, USER_ID, PROMPT]
CREDENTIALS = [API_KEY, KEY_ONE, KEY_TWO, UPSTREAM_KEY]


def workload(sidecar: Sidecar, stub: Stub, key: str) -> list[HttpAnswer]:
    """Every kind of request, each twice (miss, then hit), plus errors of several kinds."""
    persona = {"X-User-Id": USER_ID, "X-Persona-Experience": "beginner", "X-Cache-Scope": "user"}
    chat = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": PROMPT}]}
    requests: list[tuple[str, str, dict[str, Any] | None]] = [
        ("POST", "/v1/chat/completions", chat),
        ("POST", "/v1/chat/completions", {**chat, "stream": True}),
        ("POST", "/v1/completions", {"model": "gpt-3.5-turbo-instruct", "prompt": PROMPT}),
        ("POST", "/v1/embeddings", {"model": "text-embedding-3-small", "input": [PROMPT, "b"]}),
        ("POST", "/v1/moderations", {"input": PROMPT}),
        ("GET", "/v1/models", None),
        ("POST", "/v1/files", {"purpose": PROMPT}),
        ("POST", "/v1/chat/completions", {**chat, "temperature": "hot"}),  # a 400 of ours
    ]
    answers = [send(sidecar, m, p, b, key, persona) for m, p, b in requests for _ in range(2)]
    stub.fake.fail_next = 1  # an upstream 500
    answers.append(send(sidecar, "POST", "/v1/moderations", {"input": PROMPT + "!"}, key, persona))
    stub.fake.cut_stream_after = 2  # a broken stream
    answers.append(send(sidecar, "POST", *UNDERSTOOD[1], key, persona))
    stub.fake.cut_stream_after = None
    answers.append(send(sidecar, "POST", *UNDERSTOOD[0], "sk-wrong-key", persona))
    assert {a.status for a in answers} >= {200, 400, 404, 500}
    return answers


def leave_mid_stream(sidecar: Sidecar, stub: Stub, key: str) -> None:
    """A streamed miss whose client reads the first bytes and hangs up; returns once the
    upstream answer is complete."""
    body = json.dumps({**UNDERSTOOD[1][1], "user": USER_ID, "seed": 3}).encode()
    host, _, port = sidecar.root.removeprefix("http://").partition(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(
            f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\n"
            f"Authorization: Bearer {key}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        assert sock.recv(4096).startswith(b"HTTP/1.1 200")
    deadline = time.monotonic() + 5
    while stub.fake.in_flight and time.monotonic() < deadline:
        time.sleep(0.01)
    assert stub.fake.in_flight == 0


def test_no_secret_reaches_logs_keys_metrics_or_answers(
    make_sidecar: SidecarFactory,
    stub: Stub,
    private_redis: RedisServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    passthrough = make_sidecar(REDIS_URL=private_redis.url)
    managed = make_sidecar(REDIS_URL=private_redis.url, **MANAGED)
    answers = workload(passthrough, stub, API_KEY)
    stub.fake.required_key = UPSTREAM_KEY
    answers += workload(managed, stub, KEY_ONE) + workload(managed, stub, KEY_TWO)
    assert any(a.headers.get("x-cache") == "HIT" for a in answers)
    with private_redis.client() as redis:
        redis_keys = [k.decode() for k in redis.keys("*")]
        redis_values = [redis.get(k) or b"" for k in redis_keys]
    assert len(redis_keys) > 10
    # A Redis outage makes the sidecar log (the cache and the cross-replica flights).
    stub.fake.chunk_delay_ms = 5
    leave_mid_stream(managed, stub, KEY_ONE)
    stub.fake.chunk_delay_ms = 0
    private_redis.stop()
    answers += workload(managed, stub, KEY_ONE)
    private_redis.start()

    names = {r.name for r in caplog.records}
    assert {"sidecache.peers", "sidecache.cache"} <= names
    logged = caplog.text + "".join(
        f"{r.getMessage()} {r.args!r} {r.exc_text or ''}" for r in caplog.records
    )
    metrics = passthrough.request("GET", "/metrics", admin=True).body.decode()
    metrics += managed.request("GET", "/metrics", admin=True).body.decode()
    cache_keys = " ".join(a.headers.get("x-cache-key", "") for a in answers)
    assert len(cache_keys) > 16
    for secret in SECRETS:
        assert secret not in logged, secret
        assert not [k for k in redis_keys if secret in k], secret
        assert secret not in metrics, secret
        assert secret not in cache_keys, secret
    for credential in CREDENTIALS:
        assert not [v for v in redis_values if credential.encode() in v], credential
        for answer in answers:
            assert credential not in json.dumps(answer.headers), credential
            assert credential.encode() not in answer.body, credential
