"""The semantic cache end to end (issue 13, "Done when"): the official openai SDK against a sidecar
with SEMANTIC_CACHE=on and the real local model, in front of the fake upstream."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.admin_support import TOKENS
from tests.fixtures.redis_server import RedisServer
from tests.fixtures.sidecar import API_KEY, OTHER_API_KEY, LoopThread, Sidecar, SidecarFactory, Stub

ANCHOR = "How does photosynthesis work in plants?"
PARAPHRASE = "can you explain how plants do photosynthesis"
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
