"""Budget alerts (docs/design.md §5): 50/80/100 % each once per budget and period, as a log line, a
metric and a POST to a real loopback webhook; and Redis trouble never fails a request."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import msgspec
import pytest
from prometheus_client import CollectorRegistry

from proxy.budget.alerts import Alerter
from proxy.budget.book import BudgetBook
from proxy.budget.spend import SpendStore
from proxy.budget.spend_redis import RedisSpend
from proxy.cache.redis import connect_redis
from proxy.failures import BudgetExceeded
from proxy.ledger.collector import register_ledger_metrics
from proxy.settings import BudgetSettings
from tests.budget_support import Clock, Receiver, spend_store
from tests.fixtures.server_base import free_port
from tests.fixtures.servers import RedisServer
from tests.fixtures.sidecar import STORES, store_env

TENANT = "3f1c9a7d5e2b4c60"


@pytest.fixture(params=STORES)
async def spend(request: pytest.FixtureRequest) -> AsyncIterator[SpendStore]:
    url = store_env(request, request.param).get("REDIS_URL")
    async with spend_store(request.param, url) as store:
        yield store


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    hook = Receiver()
    await hook.start()
    yield hook
    await hook.close()


def book_for(
    spend: SpendStore, url: str | None, clock: Clock | None = None, **limits: float
) -> BudgetBook:
    settings = msgspec.convert(limits, BudgetSettings)
    return BudgetBook(settings, spend, alerter=Alerter(url), clock=clock or Clock())


async def test_each_threshold_alerts_once_per_period(
    spend: SpendStore, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    book = book_for(spend, receiver.url, clock, tenant_daily_usd=1.0)
    registry = CollectorRegistry()
    register_ledger_metrics(registry, budgets=book)
    with caplog.at_level(logging.WARNING, "sidecache.budget"):
        for cost in (0.3, 0.3, 0.1, 0.15, 0.2, 0.5, 0.01):  # 0.6 -> 50 %, 0.85 -> 80 %, 1.05
            await book.settle(TENANT, "u1", cost)
        await book.alerter.drain()
    assert receiver.thresholds() == [0.5, 0.8, 1.0]
    first = receiver.bodies[0]
    assert first == {
        "event": "sidecache.budget_threshold",
        "scope": "tenant",
        "tenant": TENANT,
        "user_id": None,
        "period": "daily",
        "period_start": "2026-11-24",
        "threshold": 0.5,
        "reason": "spent",
        "spent_usd": pytest.approx(0.6),
        "limit_usd": 1.0,
        "at": "2026-11-24T15:30:00+00:00",
    }
    logged = [r.getMessage() for r in caplog.records if r.getMessage().startswith("budget alert")]
    assert len(logged) == 3 and "threshold=80% reason=spent" in logged[1]
    sample = registry.get_sample_value
    assert sample("sidecache_budget_alerts_total", {"scope": "tenant", "threshold": "80"}) == 1

    clock.advance(days=1)  # a new day: the daily budget alerts again, from zero
    await book.settle(TENANT, "u1", 0.55)
    await book.alerter.drain()
    assert receiver.thresholds(period_start="2026-11-25") == [0.5]
    assert sample("sidecache_budget_alerts_total", {"scope": "tenant", "threshold": "50"}) == 2
    assert (len(receiver.bodies), book.alerter.webhook_failures) == (4, 0)
    await book.close()


async def test_user_and_monthly_budgets_alert_separately(
    spend: SpendStore, receiver: Receiver
) -> None:
    book = book_for(spend, receiver.url, user_daily_usd=0.1, tenant_monthly_usd=10.0)
    await book.settle(TENANT, "u1", 0.09)  # u1: 90 % of its day; the tenant: 0.9 % of its month
    await book.settle(TENANT, "u2", 5.0)  # u2: over its day; the tenant: 50.9 % of its month
    await book.alerter.drain()
    assert receiver.thresholds(scope="user", user_id="u1") == [0.5, 0.8]
    assert receiver.thresholds(scope="user", user_id="u2") == [0.5, 0.8, 1.0]
    assert receiver.thresholds(scope="tenant", period="monthly", period_start="2026-11") == [0.5]
    await book.close()


async def test_two_replicas_on_one_redis_alert_once(redis_url: str, receiver: Receiver) -> None:
    async with spend_store("redis", redis_url) as first, spend_store("redis", redis_url) as second:
        replicas = [
            book_for(first, receiver.url, tenant_daily_usd=1.0),
            book_for(second, receiver.url, tenant_daily_usd=1.0),
        ]
        for n in range(12):
            await replicas[n % 2].settle(TENANT, None, 0.1)
        for book in replicas:
            await book.alerter.drain()
            await book.close()
    assert receiver.thresholds() == [0.5, 0.8, 1.0]


async def test_a_refusal_at_the_limit_raises_the_100_percent_alert_once(
    spend: SpendStore, receiver: Receiver
) -> None:
    book = book_for(spend, receiver.url, tenant_daily_usd=1.0)
    await book.settle(TENANT, None, 0.1)
    with pytest.raises(BudgetExceeded):
        await book.preflight(TENANT, None, 5.0)  # one oversized request at 10 %: no alert
    await book.settle(TENANT, None, 0.75)  # 85 %: 50 and 80
    for _ in range(3):
        with pytest.raises(BudgetExceeded):
            await book.preflight(TENANT, None, 0.2)
    await book.settle(TENANT, None, 0.3)  # real spend crosses 100 % later: no second alert
    await book.alerter.drain()
    assert receiver.thresholds() == [0.5, 0.8, 1.0]
    assert receiver.bodies[-1]["reason"] == "refused"
    assert receiver.bodies[-1]["spent_usd"] == pytest.approx(0.85)
    await book.close()


async def test_a_failing_webhook_is_logged_without_its_url(
    spend: SpendStore, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()  # nothing listens there
    url = f"http://127.0.0.1:{port}/hook?token=s3cret-token"
    book = book_for(spend, url, tenant_daily_usd=1.0)
    with caplog.at_level(logging.WARNING, "sidecache.budget"):
        await book.settle(TENANT, None, 0.6)  # returns before the POST is even tried
        await book.alerter.drain()
    assert book.alerter.webhook_failures == 1
    failures = [r.getMessage() for r in caplog.records if "webhook failed" in r.getMessage()]
    assert len(failures) == 1
    assert "s3cret" not in caplog.text and str(port) not in caplog.text
    await book.close()


async def test_redis_down_fails_open_and_is_counted(private_redis: RedisServer) -> None:
    client = connect_redis(private_redis.url, 250, 8)
    book = BudgetBook(
        BudgetSettings(tenant_daily_usd=1.0), RedisSpend(client, timeout_ms=250), clock=Clock()
    )
    registry = CollectorRegistry()
    register_ledger_metrics(registry, budgets=book)
    await book.settle(TENANT, None, 0.9)
    with pytest.raises(BudgetExceeded):
        await book.preflight(TENANT, None, 0.5)

    private_redis.stop()
    await book.preflight(TENANT, None, 0.5)  # allowed: the spend cannot be read
    await book.settle(TENANT, None, 0.5)  # not counted, and no exception
    assert book.store_errors == 2
    assert registry.get_sample_value("sidecache_budget_store_errors_total") == 2

    private_redis.start()  # back (empty: the test server keeps no data)
    await book.settle(TENANT, None, 0.95)
    with pytest.raises(BudgetExceeded):
        await book.preflight(TENANT, None, 0.1)
    assert book.store_errors == 2
    await book.close()
    await client.aclose()
