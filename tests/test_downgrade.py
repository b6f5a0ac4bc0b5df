"""Over-budget downgrade (docs/design.md §13): a request whose estimate would cross its budget
is sent with the cheaper model `[budget.downgrade_to]` names, marked X-Downgraded-From, recorded
in the ledger as the model that served it and cached under that model's key; the usual 429
when the cheaper model does not fit either. A budget override's own `downgrade_to` table (the
user's, else the tenant's) comes before the configured one; `{}` turns downgrades off."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from proxy.budget.book import BudgetBook
from proxy.budget.downgrades import downgrade_in
from proxy.budget.spend import MemorySpend
from proxy.settings import BudgetSettings
from tests.admin_support import TOKENS, get
from tests.budget_support import Clock
from tests.fixtures.sidecar import LoopThread, Sidecar, SidecarFactory, Stub
from tests.ledger_db import LedgerDb

CHAT = "/v1/chat/completions"


def chat(model: str, text: str) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": 200}


GLOBAL_TABLE = '[budget.downgrade_to]\n"gpt-4o*" = "gpt-4o-mini"\n"o3*" = "o4-mini"\n'


def downgrading(
    make_sidecar: SidecarFactory, tmp_path: Path, daily_usd: float, table: str = GLOBAL_TABLE
) -> Sidecar:
    config = tmp_path / "downgrade.toml"
    config.write_text(f"[budget]\ntenant_daily_usd = {daily_usd}\n\n{table}")
    return make_sidecar(SIDECACHE_CONFIG=str(config), ADMIN_TOKENS=TOKENS)


def test_the_first_matching_glob_names_the_cheaper_model() -> None:
    table = {"gpt-4o-mini*": "gpt-4o-mini", "gpt-4o*": "x"}
    assert downgrade_in(table, "gpt-4o-2024-08-06") == "x"
    assert downgrade_in(table, "gpt-4o-mini") is None  # already the cheaper one
    assert downgrade_in(table, "o3") is None


def test_over_budget_is_served_by_the_cheaper_model(
    make_sidecar: SidecarFactory, tmp_path: Path, stub: Stub, loop_thread: LoopThread
) -> None:
    # gpt-4o's estimate (200 output tokens at $10/M) is $0.002; gpt-4o-mini's is $0.00012.
    side = downgrading(make_sidecar, tmp_path, 0.001)
    calls = stub.calls
    first = side.request("POST", CHAT, chat("gpt-4o", "downgrade me"))
    assert first.status == 200, first.body
    assert first.headers["x-downgraded-from"] == "gpt-4o"
    assert first.headers["x-cache"] == "MISS"
    assert first.json()["model"].startswith("gpt-4o-mini")  # what the upstream was asked for
    assert stub.calls == calls + 1
    again = side.request("POST", CHAT, chat("gpt-4o", "downgrade me"))
    assert again.status == 200 and again.headers["x-cache"] == "HIT"
    assert again.headers["x-downgraded-from"] == "gpt-4o"
    # The entry is the cheaper model's: asking for it directly finds the same one.
    direct = side.request("POST", CHAT, chat("gpt-4o-mini", "downgrade me"))
    assert direct.headers["x-cache"] == "HIT"
    assert direct.headers["x-cache-key"] == first.headers["x-cache-key"]
    assert "x-downgraded-from" not in direct.headers
    assert stub.calls == calls + 1
    loop_thread.run(side.runtime.ledger.flush())
    rows = loop_thread.run(
        LedgerDb("sqlite", side.runtime.settings.ledger.path).fetch(
            "SELECT model, cache_status FROM ai_requests"
        )
    )
    assert [r["model"] for r in rows] == ["gpt-4o-mini"] * 3
    downgrades = side.runtime.metrics.registry.get_sample_value("sidecache_budget_downgrades_total")
    assert downgrades == 2
    assert get(side, "rate-limits")["budget_downgrades"] == 2  # what the dashboard shows


def test_still_over_with_the_cheaper_model_is_the_usual_429(
    make_sidecar: SidecarFactory, tmp_path: Path, stub: Stub
) -> None:
    side = downgrading(make_sidecar, tmp_path, 0.00001)
    calls = stub.calls
    refused = side.request("POST", CHAT, chat("gpt-4o", "too dear anyway"))
    assert refused.status == 429
    assert refused.json()["error"]["code"] == "budget_exceeded"
    assert stub.calls == calls


def test_within_budget_nothing_is_downgraded(make_sidecar: SidecarFactory, tmp_path: Path) -> None:
    side = downgrading(make_sidecar, tmp_path, 100.0)
    answer = side.request("POST", CHAT, chat("gpt-4o", "plenty"))
    assert answer.status == 200
    assert "x-downgraded-from" not in answer.headers
    assert not answer.json()["model"].startswith("gpt-4o-mini")


TENANT, OTHER, QUIET = "3f1c9a7d5e2b4c60", "9e8d7c6b5a493827", "0a1b2c3d4e5f6071"
# What a column may hold that is not a table: SQLite's TEXT takes anything, PostgreSQL's jsonb
# any JSON value.
MALFORMED = {"sqlite": "{not json", "postgres": '["gpt-4o-mini"]'}


async def store_override(
    db: LedgerDb, scope: str, subject: str, table: str | None, daily: float | None = None
) -> None:
    """A `budget_overrides` row as an operator writes it (no admin route sets them)."""
    value = "NULL" if table is None else "'" + table.replace("'", "''") + "'"
    limit = "NULL" if daily is None else repr(daily)
    await db.execute(
        "INSERT INTO budget_overrides (scope, subject, daily_usd, downgrade_to) "
        f"VALUES ('{scope}', '{subject}', {limit}, {value})"
    )


@pytest.mark.parametrize("database", ["postgres", "sqlite"])
async def test_an_override_table_comes_before_the_configured_one(
    database: str,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    if database == "postgres":
        db = LedgerDb("postgres", request.getfixturevalue("postgres_dsn"))
    else:
        db = LedgerDb("sqlite", str(tmp_path / "ledger.db"))
    sink = db.sink()
    await sink.migrate()
    # The tenant's own table, longest glob first whatever order the database keeps.
    await store_override(
        db, "tenant", TENANT, '{"gpt-*": "gpt-3.5-turbo", "gpt-4o*": "gpt-4o-mini"}'
    )
    await store_override(db, "user", "frugal", "{}")  # no downgrade for this user
    await store_override(db, "user", "own", '{"gpt-4o*": "gpt-4o-mini-2024-07-18"}')
    await store_override(db, "tenant", QUIET, "{}")  # no downgrade for this tenant
    await store_override(db, "user", "broken", MALFORMED[database])
    await store_override(db, "user", "empty-name", '{"gpt-4o*": ""}')
    await store_override(db, "user", "limits-only", None, daily=5.0)  # defers: NULL table
    settings = BudgetSettings(downgrade_to={"o3*": "o4-mini"})
    book = BudgetBook(settings, MemorySpend(), overrides=sink, clock=Clock())
    caplog.set_level(logging.WARNING, logger="sidecache.budget")
    await book.start()
    cheaper = book.downgrades.cheaper
    # The tenant's table downgrades a model the configured one has no glob for ...
    assert cheaper(TENANT, None, "gpt-4o") == "gpt-4o-mini"
    assert cheaper(TENANT, None, "gpt-4.1") == "gpt-3.5-turbo"
    assert cheaper(TENANT, "limits-only", "gpt-4o") == "gpt-4o-mini"
    # ... and replaces it whole: the configured glob does not apply to that tenant.
    assert cheaper(TENANT, None, "o3") is None
    assert cheaper(OTHER, None, "o3") == "o4-mini"
    assert cheaper(OTHER, None, "gpt-4o") is None
    # The user's empty table turns downgrades off, the tenant's and the configured alike.
    assert cheaper(TENANT, "frugal", "gpt-4o") is None
    assert cheaper(OTHER, "frugal", "o3") is None
    assert cheaper(QUIET, None, "o3") is None
    # The user's own table comes before the tenant's.
    assert cheaper(TENANT, "own", "gpt-4o") == "gpt-4o-mini-2024-07-18"
    assert cheaper(TENANT, "own", "gpt-4.1") is None
    # A malformed table is ignored: the row defers to the tenant's, then the configured one.
    for user in ("broken", "empty-name"):
        assert cheaper(TENANT, user, "gpt-4o") == "gpt-4o-mini"
        assert cheaper(OTHER, user, "o3") == "o4-mini"
    assert await book.refresh_overrides()  # read again: still ignored, not logged again
    assert cheaper(TENANT, "broken", "gpt-4o") == "gpt-4o-mini"
    ignored = [r.getMessage() for r in caplog.records if "downgrade_to ignored" in r.getMessage()]
    assert len(ignored) == 2, ignored
    assert any("'broken'" in line for line in ignored)
    assert any("'empty-name'" in line for line in ignored)
    # An operator's change reaches the book at its next refresh.
    await db.execute("UPDATE budget_overrides SET downgrade_to = NULL WHERE subject = 'frugal'")
    assert await book.refresh_overrides()
    assert cheaper(TENANT, "frugal", "gpt-4o") == "gpt-4o-mini"
    await book.close()
    await sink.close()


def tenant_of(side: Sidecar, loop_thread: LoopThread) -> str:
    """The tenant id the sidecar gave the test's requests (a keyed hash), from the ledger."""
    loop_thread.run(side.runtime.ledger.flush())
    rows = loop_thread.run(
        LedgerDb("sqlite", side.runtime.settings.ledger.path).fetch(
            "SELECT DISTINCT tenant FROM ai_requests"
        )
    )
    assert len(rows) == 1
    return str(rows[0]["tenant"])


def with_override(
    side: Sidecar, loop_thread: LoopThread, scope: str, subject: str, table: str
) -> None:
    db = LedgerDb("sqlite", side.runtime.settings.ledger.path)
    loop_thread.run(store_override(db, scope, subject, table))
    assert loop_thread.run(side.runtime.budgets.refresh_overrides())


def test_a_tenant_override_table_downgrades_where_the_config_has_none(
    make_sidecar: SidecarFactory, tmp_path: Path, stub: Stub, loop_thread: LoopThread
) -> None:
    side = downgrading(make_sidecar, tmp_path, 0.001, table="")  # no [budget.downgrade_to]
    cheap = side.request("POST", CHAT, chat("gpt-4o-mini", "fits"))  # $0.00012 of $0.001
    assert cheap.status == 200, cheap.body
    refused = side.request("POST", CHAT, chat("gpt-4o", "too dear"))
    assert refused.status == 429 and "x-downgraded-from" not in refused.headers
    with_override(
        side, loop_thread, "tenant", tenant_of(side, loop_thread), '{"gpt-4o*": "gpt-4o-mini"}'
    )
    calls = stub.calls
    answer = side.request("POST", CHAT, chat("gpt-4o", "too dear"))
    assert answer.status == 200, answer.body
    assert answer.headers["x-downgraded-from"] == "gpt-4o"
    assert answer.json()["model"].startswith("gpt-4o-mini")
    assert stub.calls == calls + 1


def test_a_user_override_empty_table_keeps_the_429(
    make_sidecar: SidecarFactory, tmp_path: Path, stub: Stub, loop_thread: LoopThread
) -> None:
    side = downgrading(make_sidecar, tmp_path, 0.001)
    with_override(side, loop_thread, "user", "frugal", "{}")
    calls = stub.calls
    refused = side.request("POST", CHAT, chat("gpt-4o", "no cheaper"), {"X-User-Id": "frugal"})
    assert refused.status == 429, refused.body
    assert refused.json()["error"]["code"] == "budget_exceeded"
    assert "x-downgraded-from" not in refused.headers
    assert stub.calls == calls
    # Another user of the same tenant still gets the configured downgrade.
    other = side.request("POST", CHAT, chat("gpt-4o", "no cheaper"), {"X-User-Id": "someone"})
    assert other.status == 200, other.body
    assert other.headers["x-downgraded-from"] == "gpt-4o"
