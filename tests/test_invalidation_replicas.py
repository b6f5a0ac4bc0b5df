"""Invalidation on two sidecar processes sharing one Redis (issue 5, "Done when"): for each
selector, invalidating through one replica's admin port makes the very next request on the
other replica a MISS, while entries the selector does not cover stay HITs there. A user's
persona change seen by one replica invalidates that user's entries on the other."""

from __future__ import annotations

from typing import Any

from proxy.cache.entry import EntryMeta
from proxy.cache.redis import RedisStore, connect_redis
from proxy.invalidation.invalidator import Invalidator
from proxy.invalidation.selectors import Selector
from proxy.keys import KeyMaker
from proxy.settings import CacheSettings
from proxy.vocabulary import INVALIDATION_GENERATION_KEY
from tests.fixtures.redis_cluster import SharedRedis
from tests.fixtures.redis_server import RedisServer
from tests.fixtures.replicas import ADMIN_TOKEN, Replica
from tests.fixtures.sidecar import API_KEY, OTHER_API_KEY
from tests.invalidation_support import chat_status, invalidate

# An ask: (prompt, model, api key, headers).
Ask = tuple[str, str, str, dict[str, str]]


def ask(replica: Replica, item: Ask) -> str:
    prompt, model, api_key, headers = item
    return chat_status(replica.url, prompt, model=model, api_key=api_key, **headers)


def tenant_of(redis: SharedRedis | RedisServer, api_key: str) -> str:
    """The tenant id the replicas give a credential (their shared secret is in Redis)."""
    secret = redis.client().get("sc:secret")
    assert isinstance(secret, bytes)
    return KeyMaker(secret, CacheSettings()).tenant_id(f"Bearer {api_key}")


def ask_of(n: int, *, model: str = "gpt-4o-mini", key: str = API_KEY, **headers: str) -> Ask:
    return (f"Question number {n}?", model, key, headers)


Case = tuple[dict[str, Any], list[Ask], list[Ask]]


def selector_cases(redis: SharedRedis | RedisServer) -> list[Case]:
    """Each invalidation selector, the asks it covers and asks it does not cover."""
    formal, friendly = {"X-Persona-Tone": "formal"}, {"X-Persona-Tone": "friendly"}
    return [
        # selector, asks it covers, asks it does not cover
        ({"user_id": "u-1"}, [ask_of(1, **{"X-User-Id": "u-1"})],
         [ask_of(1, **{"X-User-Id": "u-2", "X-Persona-Tone": "direct"})]),
        ({"persona": {"tone": "formal"}}, [ask_of(2, **formal)], [ask_of(2, **friendly)]),
        ({"model": "gpt-4o"}, [ask_of(3, model="gpt-4o")], [ask_of(3)]),
        ({"endpoint": "completions"}, [], [ask_of(4)]),  # chat entries are not text completions
        ({"endpoint": "chat.completions"}, [ask_of(5)], []),
        ({"persona": {"tone": "formal"}, "model": "gpt-4o"},
         [ask_of(6, model="gpt-4o", **formal)], [ask_of(6, **formal), ask_of(6, model="gpt-4o")]),
        ({"tenant": tenant_of(redis, OTHER_API_KEY)}, [ask_of(7, key=OTHER_API_KEY)],
         [ask_of(7)]),
    ]  # fmt: skip


def test_each_selector_takes_effect_on_the_other_replica(
    replicas: list[Replica], shared_redis: SharedRedis
) -> None:
    a, b = replicas
    cases = selector_cases(shared_redis)
    for selector, covered, spared in cases:
        for item in covered + spared:
            assert ask(a, item) == "MISS", (selector, item)
            assert ask(b, item) == "HIT", (selector, item)
        answer = invalidate(a.admin, ADMIN_TOKEN, selector)
        assert answer["generation"] >= 1
        assert [ask(b, item) for item in covered] == ["MISS"] * len(covered), selector
        assert [ask(b, item) for item in spared] == ["HIT"] * len(spared), selector
        assert [ask(a, item) for item in covered] == ["HIT"] * len(covered), selector  # b's


def test_many_selectors_and_all_across_replicas(replicas: list[Replica]) -> None:
    a, b = replicas
    items = [ask_of(10, **{"X-User-Id": "u-7"}), ask_of(11, model="gpt-4o"), ask_of(12)]
    for item in items:
        assert ask(a, item) == "MISS"
    invalidate(b.admin, ADMIN_TOKEN, {"user_id": "u-7"}, {"model": "gpt-4o"})
    assert [ask(a, item) for item in items] == ["MISS", "MISS", "HIT"]
    invalidate(a.admin, ADMIN_TOKEN, {"all": True})
    assert [ask(b, item) for item in items] == ["MISS"] * 3


def test_a_persona_change_on_one_replica_invalidates_on_the_other(
    replicas: list[Replica],
) -> None:
    a, b = replicas
    user = {"X-Cache-Scope": "user", "X-User-Id": "learner-42"}
    beginner, expert = {"X-Persona-Experience": "beginner"}, {"X-Persona-Experience": "expert"}
    first, second = ask_of(20, **user, **beginner), ask_of(21, **user, **beginner)
    assert (ask(a, first), ask(a, second)) == ("MISS", "MISS")
    assert ask(b, second) == "HIT"
    assert ask(b, ask_of(20, **user, **expert)) == "MISS"  # b sees the change
    assert ask(a, ask_of(21, **user, **expert)) == "MISS"  # a honours it at once


async def test_a_replica_behind_reloads_though_an_earlier_reload_has_finished(
    redis_url: str,
) -> None:
    """An announcement that skipped a generation (or a waiter cancelled mid-reload) leaves a
    finished reload behind; a hit that later sees a newer shared generation must reload again,
    not take that old one as caught up (it served an invalidated entry under load)."""
    clients = [connect_redis(redis_url, 500, 4) for _ in range(2)]
    stores = [RedisStore(c, generation_key=INVALIDATION_GENERATION_KEY) for c in clients]
    a, b = (
        Invalidator(s, c, max_age_s=3600, timeout_ms=500)
        for s, c in zip(stores, clients, strict=True)
    )
    await a.start()
    await b.start()
    await b.close()  # b hears no announcement from now on
    entry = EntryMeta("t_1", "chat.completions", "gpt-4o-mini", "persona", None, {}, b.generation)
    try:
        b._schedule_catch_up()  # what an announcement that skipped a generation starts
        left_behind = b._catching_up
        assert left_behind is not None
        await left_behind  # finished, and nobody waits for it
        await a.invalidate([Selector(model="gpt-4o-mini")], source="test")
        await stores[1].get("sc:e:{nothing}")  # a hit's lookup reads the shared generation
        assert stores[1].shared_generation > b.generation
        assert await b.is_stale(entry)
    finally:
        await a.close()
        for client in clients:
            await client.aclose()
