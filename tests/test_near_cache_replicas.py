"""The near cache across two sidecar processes sharing one Redis (issue 22): a near-cache hit is
exactly as safe as a Redis hit. Every invalidation selector, an overwrite, a persona change and a
Redis restart on one side are honoured by the other on its very next request, and an entry is
not served past its Redis TTL; each test first shows the near cache was serving."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.fixtures.redis_server import RedisServer
from tests.fixtures.replicas import ADMIN_TOKEN, START_TIMEOUT_S, Replica
from tests.fixtures.sidecar import API_KEY, Stub, http_request
from tests.invalidation_support import invalidate
from tests.test_invalidation_replicas import Ask, ask, ask_of, selector_cases


def near_metric(replica: Replica, name: str, **labels: str) -> float:
    text = http_request(replica.admin, "GET", "/metrics").body.decode()
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = re.escape(name) + (r"\{" + re.escape(wanted) + r"\}" if wanted else "") + r" (\S+)"
    found = re.search(r"^" + pattern + r"$", text, re.MULTILINE)
    assert found is not None, (name, labels)
    return float(found.group(1))


def near_hits(replica: Replica) -> float:
    return near_metric(replica, "sidecache_near_cache_lookups_total", result="hit")


def wait_near_on(replica: Replica) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while near_metric(replica, "sidecache_near_cache_on") != 1.0:
        assert time.monotonic() < deadline, "the near cache did not come on"
        time.sleep(0.02)


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    """The private Redis, with DEBUG allowed from loopback (to stop its active expiry)."""
    with RedisServer(extra_args=["--enable-debug-command", "local"]) as server:
        yield server


@pytest.fixture
def near_replicas(
    tmp_path: Path, private_redis: RedisServer, stub: Stub
) -> Iterator[list[Replica]]:
    env = {"NEAR_CACHE_MB": "8"}
    started = [Replica(tmp_path, n, private_redis.url, stub.url, env) for n in ("a", "b")]
    try:
        for replica in started:
            replica.wait_healthy()
            wait_near_on(replica)
        yield started
    finally:
        for replica in started:
            replica.stop()


def near_hit(replica: Replica, item: Ask) -> None:
    """Asks twice more: the first may fill from Redis, the second must come from the near cache."""
    assert ask(replica, item) == "HIT", item
    before = near_hits(replica)
    assert ask(replica, item) == "HIT", item
    assert near_hits(replica) == before + 1, item


def test_each_selector_takes_effect_on_the_other_replica_near_cache(
    near_replicas: list[Replica], private_redis: RedisServer
) -> None:
    a, b = near_replicas
    cases = selector_cases(private_redis)
    for selector, covered, spared in cases:
        for item in covered + spared:
            assert ask(a, item) == "MISS", (selector, item)
            near_hit(b, item)
        invalidate(a.admin, ADMIN_TOKEN, selector)
        assert [ask(b, item) for item in covered] == ["MISS"] * len(covered), selector
        assert [ask(b, item) for item in spared] == ["HIT"] * len(spared), selector
        for item in spared:  # the near cache was cleared, and fills again
            near_hit(b, item)


def chat(replica: Replica, prompt: str, **headers: str) -> tuple[str, str]:
    """(X-Cache, the answer's id): ids are new on every upstream call, kept in the entry."""
    client = openai.OpenAI(base_url=replica.url, api_key=API_KEY, max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": prompt}], extra_headers=headers
    )
    return raw.headers["x-cache"], raw.parse().id


def test_an_overwrite_on_one_replica_is_served_by_the_other_next(
    near_replicas: list[Replica],
) -> None:
    a, b = near_replicas
    status, first = chat(a, "Overwritten?")
    assert status == "MISS"
    for _ in range(3):
        before = near_hits(b)
        assert chat(b, "Overwritten?") == ("HIT", first)
    assert near_hits(b) == before + 1
    for _ in range(3):
        status, newer = chat(a, "Overwritten?", **{"Cache-Control": "no-cache"})  # a refresh
        assert status == "MISS" and newer != first
        assert chat(b, "Overwritten?") == ("HIT", newer)
        assert chat(b, "Overwritten?") == ("HIT", newer)
        first = newer


def test_a_persona_change_on_one_replica_clears_the_others_near_cache(
    near_replicas: list[Replica],
) -> None:
    a, b = near_replicas
    user = {"X-Cache-Scope": "user", "X-User-Id": "learner-42"}
    beginner, expert = {"X-Persona-Experience": "beginner"}, {"X-Persona-Experience": "expert"}
    first, second = ask_of(20, **user, **beginner), ask_of(21, **user, **beginner)
    assert (ask(a, first), ask(a, second)) == ("MISS", "MISS")
    near_hit(a, second)
    near_hit(b, second)
    assert ask(b, ask_of(20, **user, **expert)) == "MISS"  # b sees the change
    assert ask(a, second) == "MISS"  # a's near copy went with it
    assert ask(a, ask_of(21, **user, **expert)) == "MISS"


def test_an_entry_is_not_served_past_its_redis_ttl(
    near_replicas: list[Replica], private_redis: RedisServer
) -> None:
    """Redis' active expiry is off here, so no invalidation message announces the expiry: the
    near copy must go by the TTL it read from Redis."""
    a, b = near_replicas
    item = ask_of(30)
    assert ask(a, item) == "MISS"
    redis = private_redis.client()
    assert redis.execute_command(  # type: ignore[no-untyped-call]
        "DEBUG", "SET-ACTIVE-EXPIRE", "0"
    ) in (b"OK", "OK", True)
    (key,) = redis.keys("sc:e:*")
    assert redis.pexpire(key, 500)
    near_hit(b, item)  # filled with what was left of the 500 ms
    time.sleep(0.6)
    assert ask(b, item) == "MISS"
    redis.close()


def test_redis_restarted_empty_is_never_answered_from_the_near_cache(
    near_replicas: list[Replica], private_redis: RedisServer
) -> None:
    a, b = near_replicas
    item = ask_of(40)
    assert ask(a, item) == "MISS"
    near_hit(b, item)
    private_redis.stop()
    private_redis.start()  # same port, empty
    assert ask(b, item) == "MISS"  # not the near copy from before the restart
    wait_near_on(b)
    wait_near_on(a)
    assert ask(a, item) == "HIT"  # b's answer, stored in the new Redis
    near_hit(b, item)
    near_hit(a, item)
