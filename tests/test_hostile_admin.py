"""Issue 23, items 3, 7, 10 and 11: what a fuzzer found on the admin port and the fake upstream.

The fake mode leaked the previous caller's key (its `/_fake/stats`) and listened on every
interface; a warming job with a control character in a field it sends as a header stayed
`running` forever; an admin body not in UTF-8 was a plain-text 500; the OpenAPI document
accepted what the server refuses; the fake answered garbage with plain-text 500s.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from pathlib import Path
from typing import Any

import jsonschema_rs
import msgspec
import pytest

from admin.cache_models import WarmBody, WarmRequest
from admin.warming import Warmer
from proxy.fake_upstream import FakeUpstream, start_fake_upstream
from proxy.fake_upstream.state import REDACTED
from proxy.vocabulary import Endpoint
from tests.admin_support import TOKEN
from tests.fixtures.server_base import free_port
from tests.fixtures.sidecar import API_KEY, LoopThread, Sidecar, SidecarFactory, Stub, http_request
from tests.invalidation_support import admin_call
from tests.test_cli import Served, launch, stop, wait_healthy

SECRETS = {"Authorization": "Bearer sk-secret-a", "api-key": "sk-secret-b", "x-api-key": "sk-sb"}
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hello?"}]}


def _no_secret(text: bytes | str) -> bool:
    raw = text.encode() if isinstance(text, str) else text
    return not any(s in raw for s in (b"sk-secret-a", b"sk-secret-b", b"sk-sb"))


# Item 3: fake mode leaks.


def test_the_fake_never_records_or_answers_a_credential(loop_thread: LoopThread) -> None:
    """`sidecache serve --upstream fake` builds `FakeUpstream()`: what it records and what
    `/_fake/stats` answers hold no credential (a header name stays, its value is redacted)."""
    fake = FakeUpstream()
    runner, url = loop_thread.run(start_fake_upstream(fake))
    try:
        root = url.removesuffix("/v1")
        answer = http_request(root, "POST", "/v1/chat/completions", CHAT, SECRETS)
        assert answer.status == 200, answer.body
        recorded = fake.requests[-1].headers
        assert {recorded[h] for h in ("authorization", "api-key", "x-api-key")} == {REDACTED}
        assert _no_secret(msgspec.json.encode(fake.requests))
        stats = http_request(root, "GET", "/_fake/stats", None, {})
        assert stats.status == 200
        assert stats.json()["last_request"]["headers"]["authorization"] == REDACTED
        assert _no_secret(stats.body)
    finally:
        loop_thread.run(runner.cleanup())


def test_stats_never_answer_a_credential_even_when_recorded(stub: Stub) -> None:
    """Tests build their fake with `record_credentials=True` to see which key went upstream;
    over HTTP, the stats still redact it."""
    root = stub.url.removesuffix("/v1")
    assert http_request(root, "POST", "/v1/chat/completions", CHAT, SECRETS).status == 200
    assert stub.fake.requests[-1].headers["authorization"] == SECRETS["Authorization"]
    stats = http_request(root, "GET", "/_fake/stats", None, {})
    assert stats.json()["last_request"]["headers"]["x-api-key"] == REDACTED
    assert _no_secret(stats.body)


CONTROL_PATHS = [
    "/_fake/knobs", "/_fake/reset", "/_fake/stats", "/v1/../_fake/knobs", "/v1/%2e%2e/_fake/knobs",
    "/v1/%2E%2E/_fake/reset", "/v1/..%2f_fake/knobs", "/v1/%2e%2e%2f_fake/knobs",
    "/v1//../_fake/knobs", "/v1/./../_fake/knobs", "/v1/models/../../_fake/knobs",
    "/v1/%2e%2e/%5ffake/knobs", "/v1/..%5c_fake/knobs", "/v1/_fake/knobs",
]  # fmt: skip


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_the_fakes_control_routes_are_not_reachable_through_the_proxy(
    make_sidecar: SidecarFactory, stub: Stub, method: str
) -> None:
    sidecar = make_sidecar()
    knobs = {"hang": True, "fail_next": 5, "required_key": "sk-mine"}
    before = stub.fake.knobs()
    for path in CONTROL_PATHS:
        answer = sidecar.request(method, path, knobs if method == "POST" else None)
        assert answer.status in (400, 404), (path, answer.status, answer.body)
        assert b'"knobs"' not in answer.body and b"total_calls" not in answer.body, path
    assert stub.fake.knobs() == before
    # /v1/_fake/knobs is an unknown /v1 route to the fake (its 404), not its control route
    assert all(p.startswith("/v1/") and ".." not in p for p in stub.fake.calls)


def _listening_address(port: int) -> str:
    out = subprocess.run(
        ["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True, check=True, timeout=10
    ).stdout.split()
    return out[3].rpartition(":")[0]


@pytest.mark.parametrize(("given", "bound"), [(None, "127.0.0.1"), ("0.0.0.0", "0.0.0.0")])
def test_fake_mode_listens_on_loopback_unless_told(
    tmp_path: Path, given: str | None, bound: str
) -> None:
    port, admin = free_port(), free_port()
    env = {"PROXY_PORT": str(port), "ADMIN_PORT": str(admin)}
    if given is not None:
        env["PROXY_HOST"] = given
    proc, log = launch(tmp_path, "--upstream", "fake", **env)
    served = Served(proc, log, port, admin)
    try:
        wait_healthy(served)
        assert _listening_address(port) == bound
    finally:
        stop(proc)
        log.close()


# Item 7: a warming job with a control character.


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"api_key": "sk-a\u0001b"}, "api_key"),
        ({"api_key": "sk-ab\n"}, "api_key"),  # a final newline: the schema's `$` lets it by
        ({"personas": [{"user_id": "u\u0001"}], "scope": "user"}, "personas[0].user_id"),
        ({"personas": [{"user_id": "u-1\n"}], "scope": "user"}, "personas[0].user_id"),
        ({"personas": [{"user_id": "two words"}]}, "personas[0].user_id"),
        ({"personas": [{"tone": "formal\u007f"}]}, "personas[0].tone"),
        ({"personas": [{"interests": "ai\r\nX-Evil: 1"}]}, "personas[0].interests"),
        ({"persona_dims": "tone\n"}, "persona_dims"),
    ],
)
def test_a_warming_field_sent_as_a_header_is_checked_at_the_api(
    admin_sidecar: Sidecar, change: dict[str, Any], param: str
) -> None:
    body = {"api_key": API_KEY, "requests": [{"endpoint": "chat.completions", "body": CHAT}]}
    answer = admin_call(admin_sidecar.admin_url, TOKEN, "POST", "cache/warm", body | change)
    assert answer.status == 400, answer.body
    error = answer.json()["error"]
    assert (error["param"], error["type"]) == (param, "invalid_request_error")
    assert "sk-a" not in error["message"]
    jobs = admin_call(admin_sidecar.admin_url, TOKEN, "GET", "cache/warm").json()["jobs"]
    assert jobs == []


def test_a_job_whose_requests_cannot_be_sent_ends_failed_with_its_reason(
    admin_sidecar: Sidecar, loop_thread: LoopThread
) -> None:
    """Past the API's checks (a Warmer driven directly): the worker met a header aiohttp will
    not send. On today's main it died and the job said `running` forever."""
    request = WarmRequest(endpoint=Endpoint.CHAT, body=CHAT)
    body = WarmBody(api_key="unused", requests=[request, request, request], concurrency=2)

    async def run() -> dict[str, Any]:
        warmer = Warmer(admin_sidecar.url.removesuffix("/v1"))
        try:
            job = warmer.start(body, {"Authorization": "Bearer sk-a\u0001b"}, "tenant")
            deadline = time.monotonic() + 5
            while (found := warmer.get(job.id)) is not None and found.state == "running":
                assert time.monotonic() < deadline, "the job is still running"
                await asyncio.sleep(0.02)
            assert found is not None
            return msgspec.to_builtins(found)  # type: ignore[no-any-return]
        finally:
            await warmer.close()

    job = loop_thread.run(run())
    assert (job["state"], job["errors"], job["done"]) == ("failed", 3, 3)
    assert job["finished_at"] is not None
    assert "ValueError" in job["last_error"] and "sk-a" not in job["last_error"]


# Item 10: an admin body that is not UTF-8 (or nests too deep for the decoder).


@pytest.mark.parametrize(
    ("path", "raw"),
    [
        ("cache/invalidate", b'{"selectors":[{"model":"\xff"}]}'),
        ("cache/warm", b'{"api_key":"sk-\xc3","requests":[]}'),
        ("circuits/reset", b'{"breaker":"\xc0\xaf"}'),  # an overlong "/"
        ("cache/feedback", b'{"key":"0123456789abcde\x80","wrong":true}'),
        # nested deeper than msgspec recurses, in the one field that takes any JSON
        (
            "cache/warm",
            b'{"api_key":"k","requests":[{"endpoint":"embeddings","body":' + b'{"a":' * 50_000,
        ),
    ],
)
def test_an_admin_body_not_in_utf8_is_a_400(admin_sidecar: Sidecar, path: str, raw: bytes) -> None:
    headers = {"Content-Type": "application/json"}
    answer = http_request(admin_sidecar.admin_url, "POST", f"/api/admin/dashboard/{path}", raw,
                          {"Authorization": f"Bearer {TOKEN}", **headers})  # fmt: skip
    assert answer.status == 400, answer.body
    assert answer.headers["content-type"].startswith("application/json")
    error = answer.json()["error"]
    assert (error["param"], error["type"]) == ("body", "invalid_request_error")


# Item 11: the OpenAPI document says what the server accepts; the fake answers garbage 400.

WARM_REQUESTS = [{"endpoint": "chat.completions", "body": CHAT}]
REFUSED = [
    ("cache/invalidate", "InvalidateBody", {"selectors": [{}]}),
    ("cache/invalidate", "InvalidateBody", {"selectors": [{"all": False}]}),
    ("cache/invalidate", "InvalidateBody", {"selectors": [{"endpoint": "images"}]}),
    ("cache/invalidate", "InvalidateBody", {"selectors": [{"model": "m", "persona": {}}]}),
    ("cache/invalidate", "InvalidateBody", {"selectors": [{"all": True, "model": "m"}]}),
    ("cache/invalidate", "InvalidateBody", {"selectors": [{"model": " \u00a0"}]}),
    ("cache/invalidate", "InvalidateBody", {"selectors": [{"persona": {"tone": "grumpy"}}]}),
    ("cache/invalidate", "InvalidateBody", {"selectors": [{"persona": {"mood": "x"}}]}),
    ("cache/invalidate", "InvalidateBody", {"selectors": [{"persona": {"interests": "a," * 11}}]}),
    ("cache/warm", "WarmBody", {"api_key": "k", "requests": WARM_REQUESTS, "concurrency": 4.5}),
    ("cache/warm", "WarmBody", {"api_key": "k", "requests": WARM_REQUESTS, "persona_dims": ""}),
    ("cache/warm", "WarmBody", {"api_key": "k", "requests": WARM_REQUESTS, "persona_dims": ","}),
    ("cache/warm", "WarmBody", {"api_key": "k", "requests": WARM_REQUESTS, "persona_dims": "x"}),
    ("cache/warm", "WarmBody", {"api_key": "k", "requests": WARM_REQUESTS, "scope": "user"}),
    ("cache/warm", "WarmBody", {"api_key": "k", "requests": WARM_REQUESTS,
                                "personas": [{"experience": "guru"}]}),
]  # fmt: skip
ACCEPTED = [
    ("cache/invalidate", "InvalidateBody", {"selectors": [{"all": True, "model": None}]}),
    ("cache/invalidate", "InvalidateBody", {"selectors": [{"endpoint": "/v1/embeddings"}]}),
    ("cache/invalidate", "InvalidateBody", {"selectors": [{"persona": {"tone": " Formal\n"}}]}),
    ("cache/invalidate", "InvalidateBody", {"selectors": [{"persona": {"interests": "AI, ml"}}]}),
    ("cache/warm", "WarmBody", {"api_key": "k", "requests": WARM_REQUESTS,
                                "persona_dims": " Tone,, density ,"}),
    ("cache/warm", "WarmBody", {"api_key": "k", "requests": WARM_REQUESTS, "persona_dims": "NONE"}),
    ("cache/warm", "WarmBody", {"api_key": "k", "requests": WARM_REQUESTS, "concurrency": 4.0}),
    ("cache/warm", "WarmBody", {"api_key": "k", "requests": WARM_REQUESTS,
                                "personas": [{"interests": ", ".join("abcdefghij") + ",,"}]}),
    ("cache/warm", "WarmBody", {"api_key": "k", "requests": WARM_REQUESTS, "scope": "user",
                                "personas": [{"user_id": " u-1 ", "experience": ""}]}),
]  # fmt: skip


def test_the_document_accepts_exactly_what_the_server_accepts(admin_sidecar: Sidecar) -> None:
    document = admin_sidecar.request("GET", "/api/admin/openapi.json", admin=True).json()

    def valid(name: str, body: dict[str, Any]) -> bool:
        schema = {"$ref": f"#/components/schemas/{name}", "components": document["components"]}
        return bool(jsonschema_rs.validator_for(schema).is_valid(body))

    for path, name, body in REFUSED:
        assert not valid(name, body), body
        answer = admin_call(admin_sidecar.admin_url, TOKEN, "POST", path, body)
        assert answer.status == 400, (body, answer.body)
    for path, name, body in ACCEPTED:
        assert valid(name, body), body
        answer = admin_call(admin_sidecar.admin_url, TOKEN, "POST", path, body)
        assert answer.status in (200, 202), (body, answer.body)


@pytest.mark.parametrize(
    "raw",
    [
        b'{"model":"\xff","messages":[{"role":"user","content":"x"}]}',
        b"[" * 100_000,
        b'{"a":' * 50_000,
        b'{"model":"m","input":"\xe2\x82","messages":[{"role":"user","content":"x"}]}',
    ],
)
def test_the_fake_answers_garbage_with_openais_400(stub: Stub, raw: bytes) -> None:
    root = stub.url.removesuffix("/v1")
    for path in ("/v1/chat/completions", "/v1/embeddings"):
        answer = http_request(root, "POST", path, raw, {"Content-Type": "application/json"})
        assert answer.status == 400, answer.body[:200]
        assert answer.headers["content-type"].startswith("application/json")
        assert answer.json()["error"]["type"] == "invalid_request_error"
