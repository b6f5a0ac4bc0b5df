"""Persona and cache headers through a real sidecar (docs/design.md §3, §7): validation errors in
OpenAI's shape, Cache-Control, X-Cache-Scope, X-Cache-Persona-Dims and the TTL they lead to."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import openai
import pytest

from tests.fixtures.redis_server import RedisServer
from tests.fixtures.sidecar import Sidecar, SidecarFactory, Stub

CHAT = "/v1/chat/completions"
MESSAGES: list[Any] = [{"role": "user", "content": "What is a prime number?"}]
BODY: dict[str, Any] = {"model": "gpt-4o-mini", "messages": MESSAGES}
FULL_PERSONA = {
    "X-Persona-Experience": "beginner",
    "X-Persona-Learning-Style": "visual",
    "X-Persona-Tone": "friendly",
    "X-Persona-Density": "concise",
    "X-Persona-Interests": "math,music",
}

# (header, invalid value, what the message must list)
INVALID: list[tuple[str, str, tuple[str, ...]]] = [
    ("X-Persona-Experience", "guru", ("beginner", "intermediate", "advanced", "expert")),
    ("X-Persona-Learning-Style", "osmosis", ("visual", "auditory", "reading", "kinesthetic")),
    ("X-Persona-Tone", "sarcastic", ("formal", "friendly", "encouraging", "direct")),
    ("X-Persona-Density", "huge", ("concise", "balanced", "detailed")),
    ("X-Persona-Interests", ",".join(f"t{i}" for i in range(11)), ("at most 10",)),
    ("X-Persona-Interests", "math;physics", ("comma-separated", "letters, digits")),
    ("X-User-Id", "two words", ("printable", "without spaces")),
    ("X-Cache-Scope", "galaxy", ("persona", "user", "tenant")),
    ("X-Cache-Persona-Dims", "shoe_size", ("none", "experience", "learning_style", "tone")),
    ("Cache-Control", "max-age=soon", ("max-age", "whole number")),
]


@pytest.mark.parametrize(
    ("header", "value", "listed"), INVALID, ids=[f"{h}={v[:12]}" for h, v, _ in INVALID]
)
def test_invalid_header_is_an_openai_shaped_400(
    sidecar: Sidecar, stub: Stub, header: str, value: str, listed: tuple[str, ...]
) -> None:
    answer = sidecar.request("POST", CHAT, BODY, {header: value})
    assert answer.status == 400
    assert answer.headers["content-type"].startswith("application/json")
    error = answer.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert error["param"] == header
    assert error["code"]
    assert header in error["message"]
    for fragment in listed:
        assert fragment in error["message"]
    assert stub.calls == 0

    # The SDK raises its typed exception with the same details.
    with pytest.raises(openai.BadRequestError) as caught:
        sidecar.client().chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, extra_headers={header: value}
        )
    assert caught.value.status_code == 400
    assert caught.value.param == header
    assert stub.calls == 0


def status(sidecar: Sidecar, headers: dict[str, str], body: dict[str, Any] = BODY) -> str:
    answer = sidecar.request("POST", CHAT, body, headers)
    assert answer.status == 200, answer.body
    cache: str = answer.headers["x-cache"]
    return cache


def test_user_scope_needs_a_user_id(sidecar: Sidecar, stub: Stub) -> None:
    answer = sidecar.request("POST", CHAT, BODY, {"X-Cache-Scope": "user"})
    assert answer.status == 400
    assert answer.json()["error"]["param"] == "X-Cache-Scope"
    assert "X-User-Id" in answer.json()["error"]["message"]
    assert stub.calls == 0


def test_body_user_counts_as_the_user_id(sidecar: Sidecar, stub: Stub) -> None:
    client = sidecar.client(**{"X-Cache-Scope": "user"})

    def ask(user: str) -> str:
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=MESSAGES, user=user
        )
        return raw.headers["x-cache"]

    assert ask("alice") == "MISS"
    assert ask("alice") == "HIT"
    assert ask("bob") == "MISS"
    assert stub.calls == 2
    # The header wins over the body field.
    assert status(
        sidecar, {"X-Cache-Scope": "user", "X-User-Id": "bob"}, {**BODY, "user": "x"}
    ) == ("HIT")


def test_no_cache_refreshes_the_entry(sidecar: Sidecar, stub: Stub) -> None:
    first = sidecar.request("POST", CHAT, BODY)
    assert first.headers["x-cache"] == "MISS"
    fresh = sidecar.request("POST", CHAT, BODY, {"Cache-Control": "no-cache"})
    assert fresh.status == 200
    assert fresh.headers["x-cache"] == "MISS"
    assert stub.calls == 2
    again = sidecar.request("POST", CHAT, BODY)
    assert again.headers["x-cache"] == "HIT"
    assert again.headers["x-cache-key"] == first.headers["x-cache-key"]
    # The entry now holds the refreshed answer, not the first one.
    assert again.json()["id"] == fresh.json()["id"] != first.json()["id"]
    assert stub.calls == 2


def test_no_store_bypasses_and_stores_nothing(sidecar: Sidecar, stub: Stub) -> None:
    for expected_calls in (1, 2):
        assert status(sidecar, {"Cache-Control": "no-store"}) == "BYPASS"
        assert stub.calls == expected_calls
    assert status(sidecar, {}) == "MISS"
    assert stub.calls == 3
    # no-store does not read either, even when an entry exists.
    assert status(sidecar, {"Cache-Control": "no-store"}) == "BYPASS"
    assert stub.calls == 4


def test_persona_dims_let_different_tones_share(sidecar: Sidecar, stub: Stub) -> None:
    narrowed = {"X-Cache-Persona-Dims": "experience"}
    formal = {"X-Persona-Experience": "beginner", "X-Persona-Tone": "formal"}
    friendly = {"X-Persona-Experience": "beginner", "X-Persona-Tone": "friendly"}
    assert status(sidecar, {**formal, **narrowed}) == "MISS"
    assert status(sidecar, {**friendly, **narrowed}) == "HIT"
    # Another experience level still misses; so does the default (all dimensions).
    assert status(sidecar, {**friendly, **narrowed, "X-Persona-Experience": "expert"}) == "MISS"
    assert status(sidecar, friendly) == "MISS"
    assert status(sidecar, formal) == "MISS"
    assert stub.calls == 4


# --- TTLs, read back from Redis -----------------------------------------------------------


def entry_ttl(redis_server: RedisServer, short_id: str) -> int:
    """The TTL of the entry whose X-Cache-Key is `short_id`."""
    with redis_server.client() as conn:
        keys = list(conn.scan_iter(match=f"sc:e:{{{short_id}*", count=1000))
        assert len(keys) == 1, keys
        ttl = conn.ttl(keys[0])
    assert isinstance(ttl, int)
    return ttl


def stored_ttl(
    sidecar: Sidecar,
    redis_server: RedisServer,
    headers: dict[str, str],
    body: dict[str, Any] = BODY,
) -> int:
    answer = sidecar.request("POST", CHAT, body, headers)
    assert answer.status == 200
    assert answer.headers["x-cache"] == "MISS"
    return entry_ttl(redis_server, answer.headers["x-cache-key"])


def test_max_age_sets_the_ttl_within_the_configured_max(
    make_sidecar: SidecarFactory, redis_url: str, redis_server: RedisServer, tmp_path: Path
) -> None:
    config = tmp_path / "small-max.toml"
    config.write_text("[ttl]\nmin = 10\nmax = 120\n")
    sidecar = make_sidecar(REDIS_URL=redis_url, SIDECACHE_CONFIG=str(config))

    def ttl_for(cache_control: str, question: str) -> int:
        body = {**BODY, "messages": [{"role": "user", "content": question}]}
        return stored_ttl(sidecar, redis_server, {"Cache-Control": cache_control}, body)

    assert 55 <= ttl_for("max-age=60", "one") <= 60
    assert 115 <= ttl_for("max-age=100000", "two") <= 120  # clamped to ttl.max
    assert 8 <= ttl_for("max-age=1", "three") <= 10  # raised to ttl.min
    assert 115 <= ttl_for("private", "five") <= 120  # the default (300 s) is clamped too


def test_more_personalisation_means_a_shorter_ttl(
    make_sidecar: SidecarFactory, redis_url: str, redis_server: RedisServer
) -> None:
    sidecar = make_sidecar(REDIS_URL=redis_url)
    generic = stored_ttl(sidecar, redis_server, {})
    two = stored_ttl(
        sidecar, redis_server, {"X-Persona-Experience": "beginner", "X-Persona-Tone": "formal"}
    )
    full = stored_ttl(sidecar, redis_server, FULL_PERSONA)
    assert generic > two > full
    assert 295 <= generic <= 300  # CACHE_DEFAULT_TTL
    assert 235 <= two <= 240  # 300 x (1 - 0.5 x 2/5)
    assert 145 <= full <= 150  # 300 x (1 - 0.5)


def test_deterministic_chat_lives_longer_than_sampled(
    make_sidecar: SidecarFactory, redis_url: str, redis_server: RedisServer
) -> None:
    sidecar = make_sidecar(REDIS_URL=redis_url)
    sampled = stored_ttl(sidecar, redis_server, {}, {**BODY, "temperature": 0.8})
    greedy = stored_ttl(sidecar, redis_server, {}, {**BODY, "temperature": 0})
    seeded = stored_ttl(sidecar, redis_server, {}, {**BODY, "temperature": 0.8, "seed": 7})
    assert greedy > sampled and seeded > sampled
    assert 295 <= sampled <= 300
    assert 3595 <= greedy <= 3600
    assert 3595 <= seeded <= 3600
