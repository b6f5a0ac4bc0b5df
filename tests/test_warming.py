"""Cache warming jobs (issue 5, item 4): each request for each persona, sent at low priority
through the normal miss path, with progress at GET .../cache/warm/{job}; later requests HIT."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.admin_support import TOKEN, TOKENS, audit_rows
from tests.fixtures.sidecar import API_KEY, LoopThread, Sidecar, SidecarFactory, Stub
from tests.invalidation_support import admin_call, chat_status

PERSONAS = [{"experience": "beginner", "tone": "friendly"}, {"experience": "expert"}]
HEADERS = [
    {"X-Persona-Experience": "beginner", "X-Persona-Tone": "friendly"},
    {"X-Persona-Experience": "expert"},
]


def chat(prompt: str) -> dict[str, Any]:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": prompt}]}
    return {"endpoint": "chat.completions", "body": body}


def start(sidecar: Sidecar, body: dict[str, Any]) -> dict[str, Any]:
    answer = admin_call(sidecar.admin_url, TOKEN, "POST", "cache/warm", body)
    assert answer.status == 202, answer.body
    job: dict[str, Any] = answer.json()
    assert job["id"].startswith("warm_") and job["state"] == "running"
    return job


def finished(sidecar: Sidecar, job_id: str, timeout_s: float = 20) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        answer = admin_call(sidecar.admin_url, TOKEN, "GET", f"cache/warm/{job_id}")
        assert answer.status == 200, answer.body
        job: dict[str, Any] = answer.json()
        if job["state"] != "running":
            return job
        time.sleep(0.05)
    pytest.fail(f"warming job {job_id} still running after {timeout_s} s")


def test_warming_turns_later_requests_into_hits(
    any_admin_sidecar: Sidecar, stub: Stub, loop_thread: LoopThread
) -> None:
    prompts = ["What is a noun?", "What is a verb?"]
    job = start(any_admin_sidecar, {
        "api_key": API_KEY, "requests": [chat(p) | {"body": chat(p)["body"] | {"stream": True}}
                                         for p in prompts],
        "personas": PERSONAS,
    })  # fmt: skip
    assert job["total"] == 4
    done = finished(any_admin_sidecar, job["id"])
    assert (done["state"], done["done"], done["misses"], done["errors"]) == ("done", 4, 4, 0)
    assert done["finished_at"] is not None
    assert stub.calls == 4
    for prompt in prompts:
        for headers in HEADERS:
            assert chat_status(any_admin_sidecar.url, prompt, **headers) == "HIT"
    assert stub.calls == 4
    # Warming twice finds everything cached.
    again = finished(any_admin_sidecar, start(any_admin_sidecar, {
        "api_key": API_KEY, "requests": [chat(p) for p in prompts], "personas": PERSONAS,
    })["id"])  # fmt: skip
    assert (again["hits"], again["misses"]) == (4, 0)
    listed = admin_call(any_admin_sidecar.admin_url, TOKEN, "GET", "cache/warm").json()["jobs"]
    assert [j["id"] for j in listed] == [again["id"], job["id"]]
    rows = [r for r in audit_rows(loop_thread, any_admin_sidecar) if r["action"] == "cache.warm"]
    assert len(rows) == 2
    assert API_KEY not in str(rows)  # the credential is used, never kept


def test_warming_embeddings_and_user_scope(admin_sidecar: Sidecar, stub: Stub) -> None:
    embeddings = {"endpoint": "embeddings",
                  "body": {"model": "text-embedding-3-small", "input": ["one", "two"]}}  # fmt: skip
    job = start(admin_sidecar, {
        "api_key": API_KEY, "requests": [embeddings, chat("Hi there.")], "scope": "user",
        "personas": [{"user_id": "u-5", "experience": "expert"}],
    })  # fmt: skip
    assert finished(admin_sidecar, job["id"])["misses"] == 2
    user = {"X-Cache-Scope": "user", "X-User-Id": "u-5", "X-Persona-Experience": "expert"}
    assert chat_status(admin_sidecar.url, "Hi there.", **user) == "HIT"
    assert chat_status(admin_sidecar.url, "Hi there.", **{**user, "X-User-Id": "u-6"}) == ("MISS")


def test_requests_the_proxy_refuses_are_counted_as_errors(admin_sidecar: Sidecar) -> None:
    broken = {"endpoint": "chat.completions", "body": {"model": "gpt-4o-mini"}}  # no messages
    job = finished(admin_sidecar, start(admin_sidecar, {
        "api_key": API_KEY, "requests": [broken, chat("Fine.")],
    })["id"])  # fmt: skip
    assert (job["state"], job["errors"], job["misses"]) == ("done", 1, 1)
    assert job["last_error"].startswith("400")


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"requests": [chat("x")]}, "api_key"),
        ({"api_key": API_KEY, "requests": []}, "requests"),
        ({"api_key": API_KEY, "requests": [{"endpoint": "images", "body": {}}]},
         "requests[0].endpoint"),
        ({"api_key": API_KEY, "requests": [chat("x")], "personas": [{"tone": "grumpy"}]},
         "personas[0].tone"),
        ({"api_key": API_KEY, "requests": [chat("x")], "scope": "user",
          "personas": [{"tone": "formal"}]}, "personas[0].user_id"),
        ({"api_key": API_KEY, "requests": [chat("x")], "persona_dims": "mood"}, "persona_dims"),
        ({"api_key": API_KEY, "requests": [chat("x")] * 1000, "personas": [{}] * 11},
         "requests"),
    ],
)  # fmt: skip
def test_a_bad_job_is_a_400_naming_the_field(
    admin_sidecar: Sidecar, body: dict[str, Any], param: str
) -> None:
    answer = admin_call(admin_sidecar.admin_url, TOKEN, "POST", "cache/warm", body)
    assert answer.status == 400, answer.body
    assert answer.json()["error"]["param"] == param


def test_managed_mode_needs_a_sidecar_key(make_sidecar: SidecarFactory) -> None:
    sidecar = make_sidecar(
        ADMIN_TOKENS=TOKENS, UPSTREAM_API_KEY="sk-upstream-secret", SIDECAR_KEYS="sc-key-1=acme"
    )
    body = {"api_key": "sc-wrong", "requests": [chat("x")]}
    answer = admin_call(sidecar.admin_url, TOKEN, "POST", "cache/warm", body)
    assert (answer.status, answer.json()["error"]["param"]) == (400, "api_key")
    job = start(sidecar, {"api_key": "sc-key-1", "requests": [chat("Managed.")]})
    assert job["tenant"] == "acme"
    assert finished(sidecar, job["id"])["misses"] == 1


def test_an_unknown_job_is_a_404(admin_sidecar: Sidecar) -> None:
    answer = admin_call(admin_sidecar.admin_url, TOKEN, "GET", "cache/warm/warm_nope")
    assert answer.status == 404
    assert answer.json()["error"]["code"] == "not_found"


def test_live_requests_go_upstream_before_queued_warming(
    make_sidecar: SidecarFactory, stub: Stub
) -> None:
    """With one upstream slot, a live request that arrives while warming requests wait for it
    is sent next: warming is low priority."""
    sidecar = make_sidecar(ADMIN_TOKENS=TOKENS, UPSTREAM_MAX_IN_FLIGHT="1")
    stub.fake.latency_ms = 200
    job = start(sidecar, {
        "api_key": API_KEY, "requests": [chat(f"Warm {n}.") for n in range(4)], "concurrency": 4,
    })  # fmt: skip
    deadline = time.monotonic() + 10
    while sidecar.runtime.gate.queued < 3 and time.monotonic() < deadline:
        time.sleep(0.01)  # one warming call upstream, three waiting for the slot
    assert sidecar.runtime.gate.queued == 3
    assert chat_status(sidecar.url, "Live.") == "MISS"
    assert finished(sidecar, job["id"])["misses"] == 4
    prompts = [r.body["messages"][0]["content"] for r in stub.fake.requests if r.body]
    assert prompts.index("Live.") == 1
