"""Rate limits (docs/design.md §13): requests and tokens per window per tenant and per user,
counted in memory or in a real Redis shared by replicas; 429 `rate_limit_exceeded` with
Retry-After before any upstream call; the x-ratelimit-* headers on every understood answer."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest
import redis.asyncio as aredis

from proxy.limits import Decision, ScopeUse
from proxy.limits.headers import duration, rate_headers
from proxy.limits.lease import AHEAD_S, LEASE_S, Lease
from proxy.limits.limiter import Limiter
from proxy.limits.memory import MemoryCounter
from proxy.limits.overrides import LimitOverrides
from proxy.limits.redis_backend import RedisCounter
from proxy.limits.scopes import LimitOverride
from proxy.settings import RateSettings, SettingsError
from proxy.settings_load import load_settings
from tests.admin_support import BASE, TOKENS, audit_rows, call, get
from tests.fixtures.redis_server import RedisServer
from tests.fixtures.replicas import ADMIN_TOKEN, Replica, healthy_replicas
from tests.fixtures.sidecar import (
    API_KEY,
    HttpAnswer,
    LoopThread,
    Sidecar,
    SidecarFactory,
    Stub,
    http_request,
)

CHAT = "/v1/chat/completions"


def chat(text: str, **extra: Any) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}], **extra}


def trio(answer: HttpAnswer, kind: str) -> tuple[str, str, str] | None:
    headers = answer.headers
    if f"x-ratelimit-limit-{kind}" not in headers:
        return None
    return (
        headers[f"x-ratelimit-limit-{kind}"],
        headers[f"x-ratelimit-remaining-{kind}"],
        headers[f"x-ratelimit-reset-{kind}"],
    )


def as_json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_no_burst_of_twice_the_limit_at_a_window_edge() -> None:
    """A fixed window would let 3 through at 0.999 s and 3 more at 1.001 s; the sliding log
    lets the next one through only once the first has been counted for a whole window."""
    clock = FakeClock()
    limiter = Limiter(RateSettings(tenant_rpm=3, window_s=1), MemoryCounter(clock))
    scopes = limiter.scopes("acme", None)

    async def allowed() -> bool:
        decision = await limiter.check(scopes, limiter.member(), requests=1, tokens=0)
        assert decision is not None
        return decision.allowed

    clock.now = 100.5
    assert await allowed()
    clock.now = 100.999
    assert [await allowed(), await allowed(), await allowed()] == [True, True, False]
    clock.now = 101.001
    assert not await allowed()  # a new fixed window would start here
    clock.now = 101.5001
    assert await allowed()  # the first request has left the window
    assert not await allowed()
    clock.now = 101.9991
    assert [await allowed(), await allowed(), await allowed()] == [True, True, False]


async def test_tokens_are_corrected_with_the_real_usage() -> None:
    clock = FakeClock()
    limiter = Limiter(RateSettings(user_tpm=100, window_s=60), MemoryCounter(clock))
    scopes = limiter.scopes("acme", "u-1")
    assert [s.name for s in scopes] == ["user"]
    first = limiter.member()
    decision = await limiter.check(scopes, first, requests=0, tokens=90)
    assert decision is not None and decision.allowed and decision.tokens is not None
    assert (decision.tokens.limit, decision.tokens.used) == (100, 90)
    refused = await limiter.check(scopes, limiter.member(), requests=0, tokens=20)
    assert refused is not None and not refused.allowed
    assert refused.retry_ms == 60_000  # when the 90 leave the window
    await limiter.correct(scopes, first, 30)  # it used 30, not 90
    again = await limiter.check(scopes, limiter.member(), requests=0, tokens=20)
    assert again is not None and again.allowed and again.tokens is not None
    assert again.tokens.used == 50


def test_reset_durations_read_as_openai_writes_them() -> None:
    assert [duration(ms) for ms in (0, 17, 1000, 7660, 60_000, 360_000, 179_560)] == [
        "0s",
        "17ms",
        "1s",
        "7.66s",
        "1m0s",
        "6m0s",
        "2m59.56s",
    ]


@pytest.mark.parametrize("name", ["RATE_TENANT_RPM", "RATE_USER_TPM", "RATE_WINDOW_S"])
def test_a_negative_limit_stops_start_up_naming_the_setting(name: str) -> None:
    with pytest.raises(SettingsError, match=name):
        load_settings({name: "-5"})


def test_no_limit_means_no_headers_and_no_counting(sidecar: Sidecar) -> None:
    answer = sidecar.request("POST", CHAT, chat("plain"))
    assert answer.status == 200
    assert trio(answer, "requests") is None and trio(answer, "tokens") is None
    assert not sidecar.runtime.limiter.active


def test_requests_limit_refuses_before_the_upstream(
    make_sidecar: SidecarFactory, stub: Stub, request: pytest.FixtureRequest
) -> None:
    for env in ({}, {"REDIS_URL": request.getfixturevalue("redis_url")}):
        side = make_sidecar(RATE_TENANT_RPM="3", **env)
        tag = f"{time.monotonic()}"
        answers = [side.request("POST", CHAT, chat(f"q{i} {tag}")) for i in range(3)]
        assert [a.status for a in answers] == [200, 200, 200]
        assert [trio(a, "requests")[:2] for a in answers] == [  # type: ignore[index]
            ("3", "2"),
            ("3", "1"),
            ("3", "0"),
        ]
        assert all(trio(a, "tokens") is None for a in answers)  # no tokens limit set
        calls = stub.calls
        refused = side.request("POST", CHAT, chat(f"q3 {tag}"))
        assert refused.status == 429
        assert refused.json()["error"]["code"] == "rate_limit_exceeded"
        assert refused.json()["error"]["type"] == "rate_limit_error"
        assert 1 <= int(refused.headers["retry-after"]) <= 60
        assert trio(refused, "requests")[:2] == ("3", "0")  # type: ignore[index]
        assert stub.calls == calls  # refused before any upstream call
        limited = side.runtime.metrics.registry.get_sample_value(
            "sidecache_rate_limited_total", {"scope": "tenant", "kind": "requests"}
        )
        assert limited == 1


def test_hits_count_as_requests_not_tokens(make_sidecar: SidecarFactory, redis_url: str) -> None:
    side = make_sidecar(REDIS_URL=redis_url, RATE_TENANT_RPM="10", RATE_TENANT_TPM="100000")
    body = chat(f"hit me {time.monotonic()}")
    miss = side.request("POST", CHAT, body)
    assert miss.status == 200 and miss.headers["x-cache"] == "MISS"
    used = miss.json()["usage"]["prompt_tokens"] + miss.json()["usage"]["completion_tokens"]
    estimate = int(miss.headers["x-ratelimit-limit-tokens"]) - int(
        miss.headers["x-ratelimit-remaining-tokens"]
    )
    assert estimate > used  # the miss was charged its (high) estimate before the call
    hit = side.request("POST", CHAT, body)
    assert hit.status == 200 and hit.headers["x-cache"] == "HIT"
    # The miss's request, then the hit's lease of two (its own and one more, counted unused).
    assert trio(hit, "requests")[:2] == ("10", "7")  # type: ignore[index]
    # The hit charged no tokens, and the miss's charge was corrected to its real usage.
    assert trio(hit, "tokens")[:2] == ("100000", str(100000 - used))  # type: ignore[index]


def test_a_tokens_limit_refuses_an_estimate_that_does_not_fit(
    make_sidecar: SidecarFactory, stub: Stub
) -> None:
    side = make_sidecar(RATE_USER_TPM="50")
    calls = stub.calls
    refused = side.request("POST", CHAT, chat("long answer", max_tokens=1000), {"X-User-Id": "u1"})
    assert refused.status == 429
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert "tokens" in refused.json()["error"]["message"]
    assert stub.calls == calls
    other = side.request("POST", CHAT, chat("short", max_tokens=5), {"X-User-Id": "u2"})
    assert other.status == 200
    assert trio(other, "tokens")[0] == "50"  # type: ignore[index]
    assert trio(other, "requests") is None


def test_the_sdk_retries_after_retry_after(make_sidecar: SidecarFactory, stub: Stub) -> None:
    side = make_sidecar(RATE_TENANT_RPM="1", RATE_WINDOW_S="2")
    sent: list[float] = []
    http = httpx2.Client(event_hooks={"request": [lambda _: sent.append(time.monotonic())]})
    client = openai.OpenAI(base_url=side.url, api_key=API_KEY, max_retries=3, http_client=http)
    first = client.chat.completions.create(**chat("first"))  # type: ignore[call-overload]
    assert first.choices
    second = client.chat.completions.create(**chat("second"))  # type: ignore[call-overload]
    assert second.choices  # answered after the SDK's own retry
    assert len(sent) >= 3  # the second was refused at least once, then retried
    refused = side.runtime.metrics.registry.get_sample_value(
        "sidecache_rate_limited_total", {"scope": "tenant", "kind": "requests"}
    )
    assert refused is not None and refused >= 1


def test_redis_down_serves_unlimited_and_says_so(
    make_sidecar: SidecarFactory, private_redis: RedisServer
) -> None:
    side = make_sidecar(REDIS_URL=private_redis.url, RATE_TENANT_RPM="1")
    assert side.request("POST", CHAT, chat("before")).status == 200
    private_redis.stop()
    answers = [side.request("POST", CHAT, chat(f"down {i}")) for i in range(3)]
    assert [a.status for a in answers] == [200, 200, 200]  # no limit, no 5xx
    assert all(trio(a, "requests") is None for a in answers)  # nothing was decided
    unenforced = side.runtime.metrics.registry.get_sample_value(
        "sidecache_rate_limit_unenforced_total"
    )
    assert unenforced is not None and unenforced >= 3


WINDOW_S = 3.0
LIMIT = 4


@pytest.fixture
def limited_replicas(
    tmp_path: Path, private_redis: RedisServer, stub: Stub
) -> Iterator[list[Replica]]:
    env = {"RATE_TENANT_RPM": str(LIMIT), "RATE_WINDOW_S": str(WINDOW_S)}
    with healthy_replicas(tmp_path, ("a", "b"), private_redis.url, stub.url, env) as started:
        yield started


def test_two_replicas_share_one_limit_with_no_edge_burst(
    limited_replicas: list[Replica],
) -> None:
    """Steady requests alternating between two replicas for three windows: no window's span
    (as the client can bound it) ever holds more than the limit, whichever replica answered."""
    allowed: list[tuple[float, float]] = []  # (sent, received) of each 200
    refused = 0
    end = time.monotonic() + 3 * WINDOW_S
    i = 0
    while time.monotonic() < end:
        replica = limited_replicas[i % 2]
        sent = time.monotonic()
        answer = http_request(replica.url.removesuffix("/v1"), "POST", CHAT, chat(f"r{i}"))
        received = time.monotonic()
        assert answer.status in (200, 429)
        if answer.status == 200:
            allowed.append((sent, received))
        else:
            refused += 1
            assert answer.json()["error"]["code"] == "rate_limit_exceeded"
        i += 1
        time.sleep(0.05)
    assert refused > 0 and len(allowed) >= 2 * LIMIT
    for sent_i, received_i in allowed:
        # Every request decided surely within [decision_i, decision_i + window].
        together = [
            1 for sent_j, received_j in allowed
            if sent_j >= received_i and received_j <= sent_i + WINDOW_S
        ]  # fmt: skip
        assert 1 + len(together) <= LIMIT


def test_an_admin_override_is_applied_audited_and_shown(
    make_sidecar: SidecarFactory, loop_thread: LoopThread, redis_url: str
) -> None:
    side = make_sidecar(ADMIN_TOKENS=TOKENS, REDIS_URL=redis_url, RATE_TENANT_RPM="100")
    tenant = side.runtime.keys.tenant_id(f"Bearer {API_KEY}")
    answer = call(side, f"{BASE}/rate-limits", method="PUT", user="ops-alice",
                  body={"scope": "tenant", "id": tenant, "rpm": 2})  # fmt: skip
    assert answer.status == 200, answer.body
    assert answer.json()["audited"] is True
    tag = f"{time.monotonic()}"
    answers = [side.request("POST", CHAT, chat(f"o{i} {tag}")) for i in range(3)]
    assert [a.status for a in answers] == [200, 200, 429]
    assert answers[0].headers["x-ratelimit-limit-requests"] == "2"
    listed = get(side, "rate-limits")
    assert listed["backend"] == "redis"
    assert listed["overrides"] == [{"scope": "tenant", "id": tenant, "rpm": 2, "tpm": None}]
    use = next(t for t in listed["tenants"] if t["tenant"] == tenant)
    assert (use["requests"]["limit"], use["requests"]["used"]) == (2, 2)
    rows = audit_rows(loop_thread, side)
    assert [(r["admin_user"], r["action"]) for r in rows] == [("ops-alice", "rate_limits.set")]
    assert as_json(rows[0]["detail"])["after"] == {"rpm": 2, "tpm": None}
    removed = call(side, f"{BASE}/rate-limits", method="DELETE",
                   body={"scope": "tenant", "id": tenant})  # fmt: skip
    assert removed.status == 200 and removed.json()["deleted"] is True
    assert side.request("POST", CHAT, chat(f"after {tag}")).status == 200  # back to 100


def test_a_bad_override_is_a_400_naming_the_field(make_sidecar: SidecarFactory) -> None:
    side = make_sidecar(ADMIN_TOKENS=TOKENS)
    answer = call(side, f"{BASE}/rate-limits", method="PUT",
                  body={"scope": "tenant", "id": "t", "rpm": -1})  # fmt: skip
    assert answer.status == 400
    assert answer.json()["error"]["param"] == "rpm"


def test_an_override_set_on_one_replica_applies_on_both(
    tmp_path: Path, private_redis: RedisServer, stub: Stub
) -> None:
    env = {"RATE_OVERRIDES_REFRESH_S": "0.2"}
    started = [Replica(tmp_path, n, private_redis.url, stub.url, env) for n in ("a", "b")]
    try:
        for replica in started:
            replica.wait_healthy()
        a, b = started
        root_b = b.url.removesuffix("/v1")
        assert "x-ratelimit-limit-requests" not in http_request(root_b, "POST", CHAT,
                                                                chat("free")).headers  # fmt: skip
        put = http_request(
            a.admin, "PUT", f"{BASE}/rate-limits",
            {"scope": "user", "id": "u-7", "rpm": 1},
            {"Authorization": f"Bearer {ADMIN_TOKEN}"},
        )  # fmt: skip
        assert put.status == 200, put.body
        time.sleep(1.0)  # several refreshes
        first = http_request(root_b, "POST", CHAT, chat("u7 one"), {"X-User-Id": "u-7"})
        assert first.status == 200 and first.headers["x-ratelimit-limit-requests"] == "1"
        second = http_request(a.url.removesuffix("/v1"), "POST", CHAT, chat("u7 two"),
                              {"X-User-Id": "u-7"})  # fmt: skip
        assert second.status == 429  # counted on b, refused on a: one shared figure
        other = http_request(root_b, "POST", CHAT, chat("u8"), {"X-User-Id": "u-8"})
        assert other.status == 200
    finally:
        for replica in started:
            replica.stop()


def test_embeddings_count_too(make_sidecar: SidecarFactory, redis_url: str) -> None:
    side = make_sidecar(REDIS_URL=redis_url, RATE_USER_RPM="2", RATE_USER_TPM="100000")
    body = {"model": "text-embedding-3-small", "input": f"embed {time.monotonic()}"}
    user = {"X-User-Id": "emb-user"}
    miss = side.request("POST", "/v1/embeddings", body, user)
    assert miss.status == 200
    assert trio(miss, "requests")[:2] == ("2", "1")  # type: ignore[index]
    hit = side.request("POST", "/v1/embeddings", body, user)
    assert hit.status == 200 and hit.headers["x-cache"] == "HIT"
    used = miss.json()["usage"]["prompt_tokens"]
    assert trio(hit, "tokens")[:2] == ("100000", str(100000 - used))  # type: ignore[index]
    refused = side.request("POST", "/v1/embeddings", body, user)
    assert refused.status == 429
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"


async def checked(
    pending: Decision | Coroutine[Any, Any, Decision | None] | None,
) -> Decision | None:
    assert pending is not None  # a limit applies
    return pending if isinstance(pending, Decision) else await pending


def assert_told_by_leases(remaining: list[int], limit: int, asks: int) -> None:
    """The remaining requests one replica told its requests, one after another: the figure of
    each one's lease (every leased slot counted), so never more than the limit has left after
    it (the n-th request is told at most `limit - n`), falling a lease at a time."""
    assert remaining[0] == limit - 1  # a quiet start is counted a request at a time
    assert remaining == sorted(remaining, reverse=True)
    assert all(told <= limit - n for n, told in enumerate(remaining, 1))
    assert len(set(remaining)) <= asks  # one figure per lease
    assert limit - remaining[-1] <= 2 * len(remaining)  # a batch at most doubles


class CountingRedisCounter(RedisCounter):
    """The real Redis counter, counting the scripts it sends."""

    def __init__(self, url: str) -> None:
        super().__init__(aredis.Redis.from_url(url), None, 2000)
        self.asks = 0

    def take(self, *args: Any, **kwargs: Any) -> Any:
        self.asks += 1
        return super().take(*args, **kwargs)


async def test_leases_take_busy_hits_a_few_at_a_time_and_tell_no_more_than_is_left(
    redis_url: str,
) -> None:
    counter = CountingRedisCounter(redis_url)
    limiter = Limiter(RateSettings(tenant_rpm=1000), counter)
    clock = FakeClock()
    limiter.lease_clock = clock  # a lease never lapses while the clock stands still
    tenant = f"lease-{time.monotonic()}"
    remaining = []
    for _ in range(100):
        decision = await checked(limiter.check_request(tenant, None))
        assert decision is not None and decision.allowed
        remaining.append(int(rate_headers(decision)["x-ratelimit-remaining-requests"]))
    assert counter.asks < 20  # not one script per request
    assert_told_by_leases(remaining, 1000, counter.asks)


async def test_two_leasing_replicas_never_let_more_than_the_limit_through(redis_url: str) -> None:
    tenant = f"lease-pair-{time.monotonic()}"
    clock = FakeClock()
    replicas = []
    for _ in range(2):
        limiter = Limiter(RateSettings(tenant_rpm=40), CountingRedisCounter(redis_url))
        limiter.lease_clock = clock
        replicas.append(limiter)
    allowed = 0
    for i in range(120):
        limiter = replicas[i % 2]
        decision = await checked(limiter.check_request(tenant, None))
        assert decision is not None
        allowed += decision.allowed
        if not decision.allowed:
            assert decision.retry_ms > 0
    assert 20 <= allowed <= 40  # leased and unused slots count: the limit errs low, never high


async def test_concurrent_hits_wait_for_the_lease_in_flight(redis_url: str) -> None:
    counter = CountingRedisCounter(redis_url)
    limiter = Limiter(RateSettings(tenant_rpm=1000), counter)
    limiter.lease_clock = FakeClock()
    tenant = f"lease-wave-{time.monotonic()}"

    async def wave() -> list[int]:
        checks = [checked(limiter.check_request(tenant, None)) for _ in range(50)]
        decisions = await asyncio.gather(*checks)
        assert all(d is not None and d.allowed for d in decisions)
        return [int(rate_headers(d)["x-ratelimit-remaining-requests"]) for d in decisions if d]

    await wave()
    asks = counter.asks
    second = await wave()
    # One batch for the whole wave, sized by what waited (50), and the lease ahead it asks for
    # once the waiters have used half of it.
    assert counter.asks - asks == 2
    await asyncio.gather(*limiter._asks)
    assert min(second) >= 1000 - 100  # every request counted once, none lost


async def test_a_busy_lease_asks_for_the_next_one_ahead(redis_url: str) -> None:
    """Half used, a lease asks for the next one in the background: the hit that finds the
    current one used up is decided from the lease ahead, with nothing to await, and the headers
    still never tell more than the limit has left."""
    counter = CountingRedisCounter(redis_url)
    limiter = Limiter(RateSettings(tenant_rpm=1000), counter)
    limiter.lease_clock = FakeClock()
    tenant = f"lease-ahead-{time.monotonic()}"
    remaining = []
    waited = 0
    for _ in range(60):
        pending = limiter.check_request(tenant, None)
        waited += not isinstance(pending, Decision)
        decision = await checked(pending)
        assert decision is not None and decision.allowed
        remaining.append(int(rate_headers(decision)["x-ratelimit-remaining-requests"]))
        await asyncio.gather(*limiter._asks)  # answered before the next hit, as under load
    assert_told_by_leases(remaining, 1000, counter.asks)
    assert waited == 2  # the first two asks (batches of one, then two); every later one ahead
    assert counter.asks < 12


async def test_a_lease_is_counted_as_its_requests_and_refusals_wait_for_it(redis_url: str) -> None:
    """A lease is one member of the log counting its whole batch: the limit is reached by
    requests, not by asks, and a refusal waits until the oldest asks leave the window."""
    limiter = Limiter(RateSettings(tenant_rpm=12), CountingRedisCounter(redis_url))
    limiter.lease_clock = FakeClock()
    tenant = f"lease-count-{time.monotonic()}"
    decisions = [await checked(limiter.check_request(tenant, None)) for _ in range(20)]
    allowed = [d for d in decisions if d is not None and d.allowed]
    refused = [d for d in decisions if d is not None and not d.allowed]
    assert len(allowed) == 12 and len(refused) == 8
    window_ms = limiter.window_ms
    assert all(0 < d.retry_ms <= window_ms + 50 for d in refused)
    assert all(rate_headers(d)["x-ratelimit-remaining-requests"] == "0" for d in refused)


async def test_a_steady_busy_scope_does_not_wait_for_asks(redis_url: str) -> None:
    """At a steady 10 hits per ms for 2 s (a busy replica), each lease is used up before it
    lapses and the next was asked for ahead: a hit waits for an ask only while the batches
    grow. (With 50 ms leases a lease of 1,024 lapsed before it was half used, nothing was
    asked ahead, and hits waited at every lapse: 27 times here.)"""
    counter = CountingRedisCounter(redis_url)
    limiter = Limiter(RateSettings(tenant_rpm=10**9), counter)
    clock = FakeClock()
    limiter.lease_clock = clock
    tenant = f"lease-steady-{time.monotonic()}"
    waited = 0
    for _ in range(2000):
        clock.now += 0.001
        for _ in range(10):
            pending = limiter.check_request(tenant, None)
            waited += not isinstance(pending, Decision)
            assert await checked(pending) is not None
        await asyncio.gather(*limiter._asks)  # answered within the ms, as a round trip is
    assert waited <= 6  # while batches are smaller than a ms of hits (1, 2, 4, 8, ...)
    assert counter.asks < 40  # batches of up to 1,024: 20,000 hits in a few dozen scripts


async def test_after_a_lapse_a_lease_asks_for_what_the_lapsed_one_served(redis_url: str) -> None:
    """A moderately busy scope whose lease lapsed with slots unused does not start again from a
    batch of one (a round trip waited for at each doubling): it asks for what it served."""
    counter = CountingRedisCounter(redis_url)
    asked: list[int] = []
    take = counter.take

    def recording_take(scopes: Any, member: str, requests: int, *rest: Any) -> Any:
        asked.append(requests)
        return take(scopes, member, requests, *rest)

    counter.take = recording_take  # type: ignore[method-assign]
    limiter = Limiter(RateSettings(tenant_rpm=100_000), counter)
    clock = FakeClock()
    limiter.lease_clock = clock
    tenant = f"lease-lapse-{time.monotonic()}"
    for _ in range(40):
        assert await checked(limiter.check_request(tenant, None)) is not None
        await asyncio.gather(*limiter._asks)
    served_before = len(asked)
    clock.now += 1.0  # every lease lapses, its unused slots with it
    decision = await checked(limiter.check_request(tenant, None))
    assert decision is not None and decision.allowed
    assert len(asked) == served_before + 1
    assert asked[-1] > 1  # sized by what the lapsed lease served, not one again


async def test_a_lease_larger_than_its_hits_asks_ahead_before_it_lapses(redis_url: str) -> None:
    """At a steady 2 hits per ms, a lease of 1,024 lapses before it is half used: it asks for
    the next one `AHEAD_S` before it lapses, sized by what it served, so no hit waits for an
    ask once the batches have grown (before: one wait at every lapse, ~2.5 a second), and the
    slots leased and never used stay a fraction of those used."""
    counter = CountingRedisCounter(redis_url)
    limiter = Limiter(RateSettings(tenant_rpm=10**9), counter)
    clock = FakeClock()
    limiter.lease_clock = clock
    tenant = f"lease-early-{time.monotonic()}"

    async def run(ms: int) -> tuple[int, Decision]:
        waited, last = 0, None
        for _ in range(ms):
            clock.now += 0.001
            for _ in range(2):
                pending = limiter.check_request(tenant, None)
                waited += not isinstance(pending, Decision)
                last = await checked(pending)
                assert last is not None and last.allowed
            await asyncio.gather(*limiter._asks)  # answered within the ms, as a round trip is
        assert last is not None
        return waited, last

    await run(1000)  # the batches grow
    asks, (_, first) = counter.asks, await run(1)
    waited, last = await run(3000)
    assert waited == 0
    assert counter.asks - asks <= 3 / (LEASE_S - AHEAD_S) + 3  # about one ask per lease
    remaining = [int(rate_headers(d)["x-ratelimit-remaining-requests"]) for d in (first, last)]
    leased = remaining[0] - remaining[1]  # counted over those 3 s: used, and leased unused
    assert 6000 <= leased <= 6000 * 2


def test_a_lease_asks_ahead_on_time_once() -> None:
    """An ask made ahead on time that brought nothing back (refused, or Redis down) is not
    made again by every hit until the lease lapses."""
    clock = FakeClock()
    asked: list[Lease] = []
    lease = Lease(clock, asked.append)  # asks that come back with nothing
    granted = Decision(True, 0, ScopeUse(limit=10**6, used=100, reset_ms=60_000))
    lease.granted(granted, 100, clock())
    clock.now += LEASE_S - AHEAD_S / 2  # on time, less than half used
    for _ in range(10):
        assert lease.use() is not None
    assert len(asked) == 1


async def test_leases_asked_ahead_on_time_keep_the_limit(redis_url: str) -> None:
    """A hit every 2 ms: leases lapse and are asked for ahead on time, up to the limit and
    past it; the limit holds, and what it lets through is never far under it."""
    limiter = Limiter(RateSettings(tenant_rpm=60), CountingRedisCounter(redis_url))
    clock = FakeClock()
    limiter.lease_clock = clock
    tenant = f"lease-near-{time.monotonic()}"
    allowed = 0
    for _ in range(400):  # 0.8 s, all within one window
        clock.now += 0.002
        decision = await checked(limiter.check_request(tenant, None))
        assert decision is not None
        allowed += decision.allowed
        await asyncio.gather(*limiter._asks)
    assert 30 <= allowed <= 60


async def test_a_reread_of_unchanged_overrides_keeps_the_leases(redis_url: str) -> None:
    """Every replica re-reads the overrides every few seconds. Unchanged, its leases stay (a
    lease dropped wastes its unused slots, counted all the same, and its scope asks again from
    one request); changed, they go, so the new limits apply at once."""
    counter = CountingRedisCounter(redis_url)
    limiter = Limiter(RateSettings(tenant_rpm=1000), counter)
    limiter.lease_clock = FakeClock()
    overrides = LimitOverrides(limiter, aredis.Redis.from_url(redis_url), refresh_s=60)
    await overrides.refresh()  # whatever other tests left stored, before any lease
    tenant = f"lease-kept-{time.monotonic()}"
    for _ in range(20):
        await checked(limiter.check_request(tenant, None))
        await asyncio.gather(*limiter._asks)
    asks = counter.asks
    await overrides.refresh()
    kept = limiter.check_request(tenant, None)
    assert isinstance(kept, Decision) and counter.asks == asks  # from the lease: no ask
    await overrides.put(LimitOverride(scope="tenant", id=tenant, rpm=500))
    try:
        changed = await checked(limiter.check_request(tenant, None))
        assert counter.asks == asks + 1
        assert changed is not None and changed.requests is not None
        assert changed.requests.limit == 500
    finally:
        await overrides.delete("tenant", tenant)
