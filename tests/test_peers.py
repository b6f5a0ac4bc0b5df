"""Single-flight across replicas (issue 3, item 2): two `python -m proxy serve` processes sharing
one Redis and one stub upstream. Identical concurrent misses on both make one upstream call; a
follower never waits on a dead or failed leader past the lock's lifetime."""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter

import openai
import pytest

from tests.fixtures.redis_cluster import SharedRedis
from tests.fixtures.replicas import LOCK_MS, Replica
from tests.fixtures.sidecar import Stub
from tests.test_single_flight import WAIT_S, Asked, ask, until

SETTLE_S = 1.0  # after the last request left the client, for the replicas to take it in


def peer_polls(redis: SharedRedis) -> int:
    """MGETs Redis has served: a follower waiting on another replica's flight polls with one
    (nothing else in these tests sends one)."""
    return redis.calls("mget")


async def test_100_misses_over_two_replicas_make_one_upstream_call(
    replicas: list[Replica], stub: Stub
) -> None:
    a, b = replicas
    sent = Counter[str]()
    clients = [a.client(lambda: sent.update("a")), b.client(lambda: sent.update("b"))]
    stub.fake.hang = True
    lead = asyncio.ensure_future(ask(clients[0]))
    await until(lambda: stub.fake.in_flight == 1, "replica a's leader reached the upstream")
    rest = [asyncio.ensure_future(ask(clients[n % 2])) for n in range(1, 100)]
    await until(lambda: sum(sent.values()) == 100, "100 requests sent")
    await asyncio.sleep(SETTLE_S)
    stub.fake.hang = False
    answers: list[Asked] = await asyncio.wait_for(asyncio.gather(lead, *rest), WAIT_S)
    on_a, on_b = [answers[0], *answers[2::2]], answers[1::2]
    assert stub.calls == 1
    # Each follower waited on the flight (COALESCED) unless a loaded machine let it in only
    # after the leader's answer was stored (HIT): either way, no second upstream call.
    assert [x.cache for x in on_a].count("MISS") == 1 and answers[0].cache == "MISS"
    assert {x.cache for x in on_a[1:] + on_b} <= {"COALESCED", "HIT"}
    assert "COALESCED" in {x.cache for x in on_b}  # replica b did wait on a's flight
    assert len({x.text for x in answers}) == 1
    for client in clients:  # both read the entry the leader stored
        assert (await ask(client)).cache == "HIT"
    assert stub.calls == 1


async def test_a_killed_leader_holds_followers_no_longer_than_its_lock(
    replicas: list[Replica], stub: Stub, shared_redis: SharedRedis
) -> None:
    a, b = replicas
    stub.fake.hang = True
    doomed = asyncio.ensure_future(ask(a.client()))
    await until(lambda: stub.fake.in_flight == 1, "replica a's leader reached the upstream")
    follower = asyncio.ensure_future(ask(b.client()))
    await until(lambda: peer_polls(shared_redis) >= 1, "replica b waits on a's flight")
    assert stub.calls == 1

    a.proc.send_signal(signal.SIGKILL)
    killed = time.monotonic()
    stub.fake.hang = False
    answer = await asyncio.wait_for(follower, WAIT_S)
    waited = time.monotonic() - killed
    assert answer.cache == "MISS"  # b called the upstream itself ...
    assert stub.calls == 2
    assert waited < 3 * (LOCK_MS / 1000 + 0.5)  # ... once a's lock expired, not after 60 s
    with pytest.raises(openai.APIConnectionError):
        await doomed


async def test_a_follower_calls_upstream_itself_after_the_leader_failed(
    replicas: list[Replica], stub: Stub, shared_redis: SharedRedis
) -> None:
    a, b = replicas
    stub.fake.hang = True
    stub.fake.fail_next, stub.fake.fail_status = 1, 500
    leader = asyncio.ensure_future(ask(a.client()))
    await until(lambda: stub.fake.in_flight == 1, "replica a's leader reached the upstream")
    follower = asyncio.ensure_future(ask(b.client()))
    await until(lambda: peer_polls(shared_redis) >= 1, "replica b waits on a's flight")

    released = time.monotonic()
    stub.fake.hang = False
    with pytest.raises(openai.InternalServerError) as failed:
        await asyncio.wait_for(leader, WAIT_S)
    assert failed.value.status_code == 500
    answer = await asyncio.wait_for(follower, WAIT_S)
    assert answer.cache == "MISS"
    assert len(answer.text.split()) == 24
    assert stub.calls == 2  # nothing was stored, so b asked the upstream itself ...
    assert time.monotonic() - released < 3 * (LOCK_MS / 1000 + 0.5)  # ... at once
    assert (await ask(a.client())).cache == "HIT"  # and stored what it got, for both
