"""Budgets on both spend stores (docs/design.md §4, §5): pre-flight refuses what would cross a
limit, settle adds real cost atomically, periods reset, overrides win over defaults and persist."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import msgspec
import pytest

from proxy.budget.book import BudgetBook
from proxy.budget.spend import SpendStore
from proxy.errors import failure_headers, failure_response, http_status
from proxy.failures import BudgetExceeded
from proxy.settings import BudgetSettings, SettingsError
from proxy.settings_load import load_settings
from tests.budget_support import Clock, spend_store
from tests.fixtures.sidecar import STORES, store_env
from tests.ledger_db import LedgerDb

TENANT = "3f1c9a7d5e2b4c60"  # a tenant id as the proxy makes them (a keyed hash)


@pytest.fixture(params=STORES)
async def spend(request: pytest.FixtureRequest) -> AsyncIterator[SpendStore]:
    url = store_env(request, request.param).get("REDIS_URL")
    async with spend_store(request.param, url) as store:
        yield store


def book_for(spend: SpendStore, clock: Clock | None = None, **limits: float) -> BudgetBook:
    return BudgetBook(msgspec.convert(limits, BudgetSettings), spend, clock=clock or Clock())


async def refusal(book: BudgetBook, user: str | None, estimate: float) -> BudgetExceeded:
    with pytest.raises(BudgetExceeded) as caught:
        await book.preflight(TENANT, user, estimate)
    return caught.value


async def test_preflight_refuses_what_would_cross_the_tenant_budget(spend: SpendStore) -> None:
    book = book_for(spend, tenant_daily_usd=1.0)
    held = await book.preflight(TENANT, None, 0.5)
    await book.settle(TENANT, None, 0.7, held)  # the real cost replaces the estimate held
    held = await book.preflight(TENANT, "u1", 0.3)  # exactly what is left still fits
    assert "$0.0000 left" in (await refusal(book, "u1", 0.01)).message  # 0.3 of it is held
    await book.settle(TENANT, "u1", 0.0, held)  # the call failed: its hold is released
    error = await refusal(book, "u1", 0.31)
    assert (http_status(error), error.code) == (429, "budget_exceeded")
    assert "tenant's daily budget of $1.00" in error.message
    assert "2026-11-24" in error.message and "$0.3000 left" in error.message
    assert TENANT not in error.message
    assert 0 < int(failure_headers(error)["Retry-After"]) <= 9 * 3600  # until 00:00 UTC
    body = failure_response(error).body
    assert isinstance(body, bytes) and b'"code":"budget_exceeded"' in body


async def test_a_used_up_budget_refuses_even_free_requests(spend: SpendStore) -> None:
    book = book_for(spend, tenant_daily_usd=0.5)
    await book.settle(TENANT, None, 0.6)  # the real cost came in above the estimate
    assert (await refusal(book, None, 0.0)).code == "budget_exceeded"


async def test_user_budgets_are_per_user_within_the_tenant(spend: SpendStore) -> None:
    book = book_for(spend, user_daily_usd=0.10)
    await book.settle(TENANT, "u1", 0.09)
    error = await refusal(book, "u1", 0.02)
    assert "user's daily budget of $0.10" in error.message
    await book.preflight(TENANT, "u2", 0.02)
    await book.preflight(TENANT, None, 5.0)  # no user: only tenant budgets apply
    await book.preflight("another-tenant", "u1", 0.02)


async def test_days_reset_and_months_accumulate(spend: SpendStore) -> None:
    clock = Clock()
    book = book_for(spend, clock, tenant_daily_usd=1.0, tenant_monthly_usd=2.5)
    for _ in range(2):
        await book.settle(TENANT, None, 0.9)
        await refusal(book, None, 0.2)
        clock.advance(days=1)
    await book.settle(TENANT, None, 0.6)  # 2.4 this month, 0.6 today
    error = await refusal(book, None, 0.2)
    assert "monthly budget of $2.50" in error.message and "(2026-11, UTC)" in error.message
    clock.advance(days=7)  # December: a new month
    await book.preflight(TENANT, None, 0.9)
    spent = {(b.scope, b.period): total for b, total in await book.spent(TENANT, None)}
    assert spent == {("tenant", "daily"): 0.0, ("tenant", "monthly"): 0.0}


async def test_settle_counts_every_budget_even_unlimited_ones(spend: SpendStore) -> None:
    book = book_for(spend)
    await book.preflight(TENANT, "u1", 1e9)  # no limits configured: nothing is refused
    await book.settle(TENANT, "u1", 0.25)
    await book.settle(TENANT, "u1", 0.5)
    await book.settle(TENANT, "u1", 0.0)  # hits cost nothing and are not counted
    spent = {(b.scope, b.period): total for b, total in await book.spent(TENANT, "u1")}
    assert spent == pytest.approx(
        {
            ("tenant", "daily"): 0.75,
            ("tenant", "monthly"): 0.75,
            ("user", "daily"): 0.75,
            ("user", "monthly"): 0.75,
        }
    )


async def test_concurrent_settles_from_two_replicas_add_up_exactly(spend: SpendStore) -> None:
    replicas = [book_for(spend), book_for(spend)]  # same store, as two sidecars on one Redis
    await asyncio.gather(
        *(replicas[n % 2].settle(TENANT, "u1", 0.01) for n in range(200)),
    )
    # On a loaded machine a settle may time out and be queued for retry (never lost, applied
    # once by its idempotency key): the totals are exact once both backlogs have drained.
    assert all([await replica.backlog.drain(30) for replica in replicas])
    spent = dict(((b.scope, b.period), t) for b, t in await replicas[0].spent(TENANT, "u1"))
    assert spent[("tenant", "daily")] == pytest.approx(2.0, abs=1e-9)
    assert spent[("user", "monthly")] == pytest.approx(2.0, abs=1e-9)


async def test_ids_with_key_syntax_cannot_collide(spend: SpendStore) -> None:
    book = book_for(spend, user_daily_usd=1.0)
    tricky = ["a:d:2026-11-24", "a}{b", "a", "x" * 500]
    for user in tricky:
        await book.settle(TENANT, user, 0.6)
    for user in tricky:
        spent = dict(((b.scope, b.period), t) for b, t in await book.spent(TENANT, user))
        assert spent[("user", "daily")] == pytest.approx(0.6)
    keys = [b.key for user in tricky for b in book.budgets(TENANT, user)]
    assert all(key.count("{") == 1 and key.count("}") == 1 for key in keys)


def ledger_db(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> LedgerDb:
    if kind == "postgres":
        return LedgerDb("postgres", request.getfixturevalue("postgres_dsn"))
    return LedgerDb("sqlite", str(tmp_path / "ledger.db"))


async def store_override(
    db: LedgerDb, scope: str, subject: str, daily: float | None, monthly: float | None
) -> None:
    """A `budget_overrides` row as an operator writes it: no admin route sets them yet."""
    limits = ", ".join("NULL" if limit is None else repr(limit) for limit in (daily, monthly))
    await db.execute(
        "INSERT INTO budget_overrides (scope, subject, daily_usd, monthly_usd) "
        f"VALUES ('{scope}', '{subject}', {limits})"
    )


@pytest.mark.parametrize("database", ["postgres", "sqlite"])
async def test_overrides_win_over_defaults_and_persist(
    spend: SpendStore, database: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    db = ledger_db(database, request, tmp_path)
    sink = db.sink()
    await sink.migrate()
    await store_override(db, "user", "vip", daily=10.0, monthly=None)
    await store_override(db, "tenant", TENANT, daily=0.0, monthly=None)  # unlimited
    settings = BudgetSettings(user_daily_usd=1.0, tenant_daily_usd=3.0)
    book = BudgetBook(settings, spend, overrides=sink, clock=Clock())
    await book.start()
    await book.preflight(TENANT, "vip", 5.0)
    assert "user's daily budget of $1.00" in (await refusal(book, "u2", 5.0)).message
    await store_override(db, "user", "u2", daily=None, monthly=0.2)
    assert await book.refresh_overrides()  # what the book's refresh task does every so often
    assert "monthly budget of $0.20" in (await refusal(book, "u2", 0.5)).message
    with pytest.raises((asyncpg.CheckViolationError, sqlite3.IntegrityError)):
        await store_override(db, "user", "u3", daily=-1.0, monthly=None)
    await book.close()

    # Another replica (or a restart) reads them back from the database.
    again = BudgetBook(settings, spend, overrides=sink, clock=Clock())
    await again.start()
    assert {(o.scope, o.subject, o.daily_usd, o.monthly_usd) for o in again.overrides} == {
        ("user", "vip", 10.0, None),
        ("tenant", TENANT, 0.0, None),
        ("user", "u2", None, 0.2),
    }
    await again.preflight(TENANT, "vip", 5.0)
    await refusal(again, "u1", 5.0)
    await again.close()
    await sink.close()


async def test_a_hold_never_settled_lapses(spend: SpendStore) -> None:
    """A process that dies between reserve and settle leaves a hold: it stops counting after
    `reservation_hold_s`, so the budget is not held forever."""
    book = BudgetBook(
        BudgetSettings(tenant_daily_usd=1.0, reservation_hold_s=0.2), spend, clock=Clock()
    )
    assert await book.preflight(TENANT, None, 0.6) is not None  # never settled
    await refusal(book, None, 0.6)
    for _ in range(100):  # bounded: the hold lapses 0.2 s after it was taken
        await asyncio.sleep(0.05)
        try:
            held = await book.preflight(TENANT, None, 0.6)
        except BudgetExceeded:
            continue
        break
    else:
        pytest.fail("the hold never lapsed")
    await book.settle(TENANT, None, 0.5, held)
    spent = {(b.scope, b.period): t for b, t in await book.spent(TENANT, None)}
    assert spent[("tenant", "daily")] == pytest.approx(0.5)


def test_budget_on_store_down_is_open_by_default_closed_on_request_and_nothing_else() -> None:
    assert load_settings({}).budget.on_store_down == "open"
    assert load_settings({"BUDGET_ON_STORE_DOWN": "closed"}).budget.on_store_down == "closed"
    with pytest.raises(SettingsError) as caught:
        load_settings({"BUDGET_ON_STORE_DOWN": "maybe"})
    assert str(caught.value) == (
        "invalid setting BUDGET_ON_STORE_DOWN='maybe': expected one of open, closed"
    )


async def test_a_tiny_budget_reads_in_its_own_digits(spend: SpendStore) -> None:
    """A $0.001 budget once read "budget of $0.00 ... $0.0000 left" in its refusal."""
    book = book_for(spend, tenant_daily_usd=0.001)
    error = await refusal(book, None, 0.0025)
    assert "budget of $0.001 " in error.message
    assert "$0.0010 left" in error.message and "estimated at $0.0025" in error.message
