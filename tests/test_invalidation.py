"""Invalidation through the admin API on one sidecar, on both stores (issue 5, item 3): the
next request for an invalidated entry is a MISS, others stay HITs; a user's persona change
invalidates that user's user-scoped entries; bad bodies are 400s naming the field; Redis down
is a 503 that invalidated nothing; every invalidation is audited."""

from __future__ import annotations

from typing import Any

import openai
import pytest

from tests.admin_support import TOKEN, TOKENS, audit_rows
from tests.fixtures.redis_server import RedisServer
from tests.fixtures.sidecar import LoopThread, Sidecar, SidecarFactory, Stub
from tests.invalidation_support import admin_call, chat_status, invalidate
from tests.test_admin_health import samples, value

BEGINNER = {"X-Persona-Experience": "beginner"}
EXPERT = {"X-Persona-Experience": "expert"}


def test_an_invalidated_persona_misses_and_others_still_hit(
    any_admin_sidecar: Sidecar, stub: Stub, loop_thread: LoopThread
) -> None:
    url = any_admin_sidecar.url
    for persona in (BEGINNER, EXPERT):
        assert chat_status(url, "Define entropy.", **persona) == "MISS"
        assert chat_status(url, "Define entropy.", **persona) == "HIT"
    answer = invalidate(any_admin_sidecar.admin_url, TOKEN, {"persona": {"experience": "Beginner"}})
    assert answer["selectors"] == [{"persona": {"experience": "beginner"}}]
    assert answer["generation"] >= 1 and answer["rules_held"] >= 1 and answer["audited"] is True

    calls = stub.calls
    assert chat_status(url, "Define entropy.", **BEGINNER) == "MISS"
    assert chat_status(url, "Define entropy.", **BEGINNER) == "HIT"  # the new entry is good
    assert chat_status(url, "Define entropy.", **EXPERT) == "HIT"
    assert stub.calls == calls + 1
    row = audit_rows(loop_thread, any_admin_sidecar)[-1]
    assert row["action"] == "cache.invalidate"
    assert "beginner" in str(row["target"])


def test_many_selectors_in_one_call(any_admin_sidecar: Sidecar) -> None:
    url = any_admin_sidecar.url
    asks: list[tuple[str, str, dict[str, str]]] = [
        ("Name a prime.", "gpt-4o-mini", {"X-User-Id": "u-1"}),
        ("Name a prime.", "gpt-4o", {"X-User-Id": "u-2"}),
        ("Name a prime.", "gpt-4o-mini", {"X-User-Id": "u-3", "X-Persona-Tone": "formal"}),
    ]
    for prompt, model, headers in asks:
        assert chat_status(url, prompt, model=model, **headers) == "MISS"
    invalidate(any_admin_sidecar.admin_url, TOKEN, {"user_id": "u-1"}, {"model": "gpt-4o"})
    after = [chat_status(url, prompt, model=model, **headers) for prompt, model, headers in asks]
    assert after == ["MISS", "MISS", "HIT"]


def test_invalidate_all_and_by_endpoint(any_admin_sidecar: Sidecar) -> None:
    url = any_admin_sidecar.url
    client = openai.OpenAI(base_url=url, api_key="sk-test-key", max_retries=0)

    def embed(*inputs: str) -> str:
        raw = client.embeddings.with_raw_response.create(
            model="text-embedding-3-small", input=list(inputs)
        )
        raw.parse()
        return raw.headers["x-cache-hits"]

    assert embed("alpha", "beta") == "0/2"
    assert chat_status(url, "Hello there.") == "MISS"
    invalidate(any_admin_sidecar.admin_url, TOKEN, {"endpoint": "/v1/embeddings"})
    assert embed("alpha") == "0/1"
    assert embed("alpha", "beta") == "1/2"
    assert chat_status(url, "Hello there.") == "HIT"
    invalidate(any_admin_sidecar.admin_url, TOKEN, {"all": True})
    assert embed("alpha") == "0/1"
    assert chat_status(url, "Hello there.") == "MISS"


def test_a_moderation_that_names_no_model_is_invalidated_by_the_default_model(
    any_admin_sidecar: Sidecar,
) -> None:
    """Its entry records the model that answered it, as its ledger row does."""
    client = openai.OpenAI(base_url=any_admin_sidecar.url, api_key="sk-test-key", max_retries=0)

    def moderate() -> str:
        raw = client.moderations.with_raw_response.create(input="Is this fine?")
        raw.parse()
        return raw.headers["x-cache"]

    assert moderate() == "MISS"
    assert moderate() == "HIT"
    invalidate(any_admin_sidecar.admin_url, TOKEN, {"model": "omni-moderation-latest"})
    assert moderate() == "MISS"


def test_a_persona_change_invalidates_the_users_own_entries(any_admin_sidecar: Sidecar) -> None:
    url = any_admin_sidecar.url
    own = {"X-Cache-Scope": "user", "X-User-Id": "learner-9"}
    other = {"X-Cache-Scope": "user", "X-User-Id": "learner-10"}
    for prompt in ("Explain tides.", "Explain wind."):
        assert chat_status(url, prompt, **own, **BEGINNER) == "MISS"
        assert chat_status(url, prompt, **other, **BEGINNER) == "MISS"
    assert chat_status(url, "Explain tides.", **own, **BEGINNER) == "HIT"

    # The same user as an expert: not served the beginner's answer, on any prompt.
    assert chat_status(url, "Explain tides.", **own, **EXPERT) == "MISS"
    assert chat_status(url, "Explain wind.", **own, **EXPERT) == "MISS"
    assert chat_status(url, "Explain wind.", **own, **EXPERT) == "HIT"
    # Another user's private entries are untouched.
    assert chat_status(url, "Explain wind.", **other, **BEGINNER) == "HIT"
    found = samples(any_admin_sidecar)
    assert value(found, "sidecache_invalidations_total", source="persona_change") >= 1
    assert value(found, "sidecache_cache_stale_total", endpoint="chat.completions") >= 2


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b"not json", "body"),
        ({}, "selectors"),
        ({"selectors": []}, "selectors"),
        ({"selectors": [{}]}, "selectors[0]"),
        ({"selectors": [{"model": "gpt-4o"}, {"colour": "red"}]}, "selectors[1].colour"),
        ({"selectors": [{"persona": {"tone": "sarcastic"}}]}, "selectors[0].persona.tone"),
        ({"selectors": [{"all": True, "user_id": "u"}]}, "selectors[0]"),
        ({"selectors": [{"user_id": 42}]}, "selectors[0].user_id"),
    ],
)
def test_a_bad_body_is_a_400_naming_the_field(
    make_sidecar: SidecarFactory, body: Any, param: str
) -> None:
    sidecar = make_sidecar(ADMIN_TOKENS=TOKENS)
    answer = admin_call(sidecar.admin_url, TOKEN, "POST", "cache/invalidate", body)
    assert answer.status == 400, answer.body
    assert answer.json()["error"]["param"] == param


def test_without_a_token_nothing_is_invalidated(make_sidecar: SidecarFactory) -> None:
    sidecar = make_sidecar(ADMIN_TOKENS=TOKENS)
    assert chat_status(sidecar.url, "Keep me.") == "MISS"
    body = {"selectors": [{"all": True}]}
    assert (
        admin_call(sidecar.admin_url, "wrong-token", "POST", "cache/invalidate", body).status == 401
    )
    assert chat_status(sidecar.url, "Keep me.") == "HIT"


def test_redis_down_is_a_503_and_invalidates_nothing(
    make_sidecar: SidecarFactory, private_redis: RedisServer
) -> None:
    sidecar = make_sidecar(ADMIN_TOKENS=TOKENS, REDIS_URL=private_redis.url)
    private_redis.stop()
    body = {"selectors": [{"all": True}]}
    answer = admin_call(sidecar.admin_url, TOKEN, "POST", "cache/invalidate", body)
    assert answer.status == 503
    assert "nothing was invalidated" in answer.json()["error"]["message"]
    private_redis.start()
    assert chat_status(sidecar.url, "Back again.") == "MISS"
    assert chat_status(sidecar.url, "Back again.") == "HIT"


def test_a_replica_that_missed_the_announcement_still_misses(
    make_sidecar: SidecarFactory, redis_url: str, loop_thread: LoopThread
) -> None:
    """The shared generation read with every hit, not pub/sub, is what makes it immediate."""
    a = make_sidecar(ADMIN_TOKENS=TOKENS, REDIS_URL=redis_url)
    b = make_sidecar(ADMIN_TOKENS=TOKENS, REDIS_URL=redis_url)
    loop_thread.run(b.runtime.invalidations.close())  # b hears no announcement from now on
    assert chat_status(a.url, "Shared answer.") == "MISS"
    assert chat_status(b.url, "Shared answer.") == "HIT"
    invalidate(a.admin_url, TOKEN, {"model": "gpt-4o-mini"})
    assert chat_status(b.url, "Shared answer.") == "MISS"
    assert chat_status(b.url, "Shared answer.") == "HIT"


def test_invalidation_still_works_after_redis_restarts_empty(
    make_sidecar: SidecarFactory, private_redis: RedisServer
) -> None:
    """Generations come from the Redis clock, so they grow past what replicas hold even when
    Redis comes back without its data (a counter would start again below them)."""
    sidecar = make_sidecar(ADMIN_TOKENS=TOKENS, REDIS_URL=private_redis.url)
    first = invalidate(sidecar.admin_url, TOKEN, {"all": True})["generation"]
    private_redis.stop()
    private_redis.start()
    assert private_redis.client().dbsize() == 0
    assert chat_status(sidecar.url, "After the restart.") == "MISS"
    assert chat_status(sidecar.url, "After the restart.") == "HIT"
    assert invalidate(sidecar.admin_url, TOKEN, {"all": True})["generation"] > first
    assert chat_status(sidecar.url, "After the restart.") == "MISS"
