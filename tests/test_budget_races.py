"""Budgets under concurrency and faults (issue #19, items 3 to 5): concurrent misses cannot spend
past a budget (the estimate is reserved atomically), settles under a burst all count, and
a spend store that is down or restarted empty neither opens budgets silently nor resets them."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import openai
import pytest

from proxy.budget.book import BudgetBook
from proxy.budget.spend_redis import RedisSpend
from proxy.cache.redis import connect_redis
from proxy.settings import BudgetSettings
from tests.budget_support import Clock
from tests.fixtures.redis_server import RedisServer
from tests.fixtures.sidecar import (
    API_KEY,
    STORES,
    LoopThread,
    Sidecar,
    SidecarFactory,
    Stub,
    store_env,
)
from tests.ledger_db import LedgerDb

TENANT = "3f1c9a7d5e2b4c60"
CHAT_MODEL = "gpt-4o-mini"
MAX_TOKENS = 7
WAIT_S = 60.0


async def until(ready: Callable[[], bool], what: str, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not ready():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout_s} s: {what}")
        await asyncio.sleep(0.01)


def question(n: int) -> list[Any]:
    return [{"role": "user", "content": f"Question {n:04d}: what is {n} squared?"}]


async def ask(client: openai.AsyncOpenAI, n: int) -> int:
    """The status of one distinct chat miss."""
    return (await ask_raw(client, n))[0]


async def ask_raw(client: openai.AsyncOpenAI, n: int) -> tuple[int, Any, str | None]:
    """(status, headers, error code) of one distinct chat miss."""
    try:
        raw = await client.chat.completions.with_raw_response.create(
            model=CHAT_MODEL, messages=question(n), max_tokens=MAX_TOKENS
        )
    except openai.APIStatusError as exc:
        return exc.status_code, exc.response.headers, getattr(exc, "code", None)
    return raw.status_code, raw.headers, None


def estimate(sidecar: Sidecar, n: int) -> float:
    """The pre-flight estimate of `ask(n)`'s body, as the sidecar computes it (the SDK's body
    is compact JSON like this one, give or take a few bytes: counted high)."""
    body = {"messages": question(n), "model": CHAT_MODEL, "max_tokens": MAX_TOKENS}
    return sidecar.runtime.prices.estimate(CHAT_MODEL, len(json.dumps(body)) + 64, MAX_TOKENS)


async def ledger_cost(loop_thread: LoopThread, sidecar: Sidecar) -> float:
    loop_thread.run(sidecar.runtime.ledger.flush())
    ledger = sidecar.runtime.settings.ledger
    db = (
        LedgerDb("postgres", ledger.database_url)
        if ledger.database_url
        else LedgerDb("sqlite", ledger.path)
    )
    rows = await db.rows_by_id()
    return sum(float(row["cost"]) for row in rows.values())


def tenant_daily(loop_thread: LoopThread, sidecar: Sidecar) -> float:
    """What the sidecar's spend store counts against the test tenant's daily budget."""
    tenant = sidecar.runtime.keys.tenant_id(f"Bearer {API_KEY}")
    return loop_thread.run(sidecar.runtime.budgets.spent(tenant, None))[0][1]


@pytest.mark.parametrize("store", STORES)
async def test_300_concurrent_misses_cannot_overspend_a_budget(
    make_sidecar: SidecarFactory,
    stub: Stub,
    loop_thread: LoopThread,
    store: str,
    request: pytest.FixtureRequest,
) -> None:
    limit = 0.001  # about a third of what 300 of these chats cost
    env = store_env(request, store)
    sidecar = make_sidecar(BUDGET_TENANT_DAILY_USD=str(limit), UPSTREAM_MAX_IN_FLIGHT="1000", **env)
    client = sidecar.aclient()
    # Every call allowed is held at the stub until each request has either passed the budget
    # check (its flight exists) or been refused: all 300 pre-flights run before any spend is
    # counted, the race at its widest.
    stub.fake.hang = True
    tasks = [asyncio.ensure_future(ask(client, n)) for n in range(300)]
    flights = sidecar.runtime.flights.flights
    await until(
        lambda: len(flights) + sum(t.done() for t in tasks) == 300,
        "every request past the budget check or refused",
    )
    stub.fake.hang = False
    statuses = await asyncio.wait_for(asyncio.gather(*tasks), WAIT_S)
    assert set(statuses) == {200, 429}
    spent = await ledger_cost(loop_thread, sidecar)
    assert 0 < spent <= limit + estimate(sidecar, 299)
    assert loop_thread.run(sidecar.runtime.budgets.backlog.drain(WAIT_S))  # settles all landed
    assert tenant_daily(loop_thread, sidecar) == pytest.approx(spent, rel=1e-9)  # as the ledger


async def test_a_burst_of_settles_through_a_small_pool_all_count(redis_url: str) -> None:
    """Issue #19 item 4: 2,000 concurrent settles through a pool of 2 connections. Each
    settle lands, at once or retried; the counter ends at their exact sum."""
    client = connect_redis(redis_url, 250, 2)
    book = BudgetBook(BudgetSettings(), RedisSpend(client, timeout_ms=250), clock=Clock())
    try:
        await asyncio.gather(*(book.settle(TENANT, f"u{n % 7}", 0.0001) for n in range(2000)))

        async def counted() -> float:
            return (await book.spent(TENANT, None))[0][1]

        for _ in range(int(WAIT_S / 0.05)):  # retried settles land in the background
            if await counted() >= 0.2 - 1e-9:
                break
            await asyncio.sleep(0.05)
        assert await counted() == pytest.approx(0.2, abs=1e-9)
        spent = {(b.scope, b.period): t for b, t in await book.spent(TENANT, "u3")}
        assert spent[("user", "monthly")] == pytest.approx(
            sum(n % 7 == 3 for n in range(2000)) * 0.0001, abs=1e-9
        )
    finally:
        await book.close()
        await client.aclose()


def sample(sidecar: Sidecar, name: str, **labels: str) -> float | None:
    return sidecar.runtime.metrics.registry.get_sample_value(name, labels)


@pytest.mark.parametrize("mode", ["closed", "open"])
async def test_a_budget_store_that_is_down_fails_as_configured(
    make_sidecar: SidecarFactory, stub: Stub, private_redis: RedisServer, mode: str
) -> None:
    """Issue #19 item 5: BUDGET_ON_STORE_DOWN=closed answers 503 with Retry-After before any
    upstream call; open serves the request, and the metrics say it went unchecked."""
    sidecar = make_sidecar(
        REDIS_URL=private_redis.url, BUDGET_TENANT_DAILY_USD="1", BUDGET_ON_STORE_DOWN=mode
    )
    client = sidecar.aclient()
    assert await ask(client, 1) == 200
    private_redis.stop()
    calls = stub.calls
    status, headers, code = await ask_raw(client, 2)
    if mode == "closed":
        assert (status, code) == (503, "budget_store_unavailable")
        assert int(headers["retry-after"]) > 0
        assert stub.calls == calls  # refused before the upstream was asked
    else:
        assert status == 200 and stub.calls == calls + 1
    decision = "refused" if mode == "closed" else "allowed"
    assert sample(sidecar, "sidecache_budget_unchecked_total", decision=decision) == 1
    assert sample(sidecar, "sidecache_budget_store_up", backend="redis", on_store_down=mode) == 0


@pytest.mark.parametrize(
    ("restart", "database"),
    [
        ("redis-restarted-empty", "sqlite"),
        ("redis-restarted-empty", "postgres"),
        ("memory-new-process", "sqlite"),
    ],
)
async def test_budget_totals_are_restored_from_the_ledger(
    make_sidecar: SidecarFactory,
    loop_thread: LoopThread,
    private_redis: RedisServer,
    tmp_path: Any,
    restart: str,
    database: str,
    request: pytest.FixtureRequest,
) -> None:
    """Issue #19 item 5: the spend of the period survives a Redis restart (an empty Redis) and
    a new process on the memory store: the totals come back from the ledger, so a used-up
    budget stays used up."""
    limit = 1e-4  # about a dozen of these chats
    env = {
        "BUDGET_TENANT_DAILY_USD": str(limit),
        "LEDGER_PATH": str(tmp_path / "ledger.db"),
        "BUDGET_ON_STORE_DOWN": "closed",  # a Redis reconnecting answers 503, never unchecked
        "CACHE_KEY_SECRET": "a-secret-for-stable-tenant-ids-0123456789",  # same ids after restart
    }
    if restart == "redis-restarted-empty":
        env["REDIS_URL"] = private_redis.url
    if database == "postgres":
        env["DATABASE_URL"] = request.getfixturevalue("postgres_dsn")
    sidecar = make_sidecar(**env)
    client = sidecar.aclient()
    statuses = [await ask(client, n) for n in range(40)]
    assert 200 in statuses and statuses[-1] == 429  # used up
    assert loop_thread.run(sidecar.runtime.budgets.backlog.drain(WAIT_S))
    spent = await ledger_cost(loop_thread, sidecar)
    assert tenant_daily(loop_thread, sidecar) == pytest.approx(spent, rel=1e-9)

    if restart == "redis-restarted-empty":
        private_redis.stop()
        private_redis.start()
        assert private_redis.client().dbsize() == 0
    else:
        sidecar = make_sidecar(**env)  # a new process: a new, empty memory store
        client = sidecar.aclient()
    status = 503
    for n in range(100, 200):  # until the client has reconnected to the new Redis
        status = await ask(client, n)
        if status != 503:
            break
    assert status == 429  # still used up: restored, not reset
    assert tenant_daily(loop_thread, sidecar) == pytest.approx(spent, rel=1e-9)
    assert (sample(sidecar, "sidecache_budget_restored_total") or 0) >= 1


async def test_a_settle_retried_after_it_landed_counts_once(redis_url: str) -> None:
    """A settle whose answer was lost (a timeout after Redis ran it) is retried from the
    backlog: its once-marker makes the second run add nothing."""
    client = connect_redis(redis_url, 250, 4)
    store = RedisSpend(client, timeout_ms=250)
    keys = [("sc:b:{t1}:t:d:2026-11-24", 3600), ("sc:b:{t1}:t:m:2026-11", 3600)]
    try:
        assert await store.settle(keys, 0.25, "", "sc:b:{t1}:k:one") == [0.25, 0.25]
        assert await store.settle(keys, 0.25, "", "sc:b:{t1}:k:one") == [0.25, 0.25]
        assert await store.settle(keys, 0.25, "", "sc:b:{t1}:k:two") == [0.5, 0.5]
    finally:
        await client.aclose()
