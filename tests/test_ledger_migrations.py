"""Versioned migrations (issue 4): applied once, idempotent, safe when two replicas start at
once, shipped with the package, and runnable as `sidecache migrate`."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import asyncpg
import msgspec
import pytest

from proxy.ledger.migrate import load_migrations, split_sqlite
from proxy.ledger.records import COLUMNS, pack
from proxy.settings_load import ENV_FIELDS
from tests.ledger_db import LedgerDb, assert_rollup_matches, make_records

REPO = Path(__file__).resolve().parent.parent
TABLES = {"ai_requests", "ai_usage_hourly", "ai_usage_tenant_hourly", "admin_audit",
          "budget_overrides", "schema_migrations"}  # fmt: skip
INDEXES = {"ai_requests_user_created", "ai_requests_tenant_created"}

ALL = [1, 2, 3, 4, 5, 6, 7]  # every migration shipped, in order
_PG_MIGRATIONS_TABLE = """
CREATE TABLE schema_migrations (version integer PRIMARY KEY, name text NOT NULL,
                                applied_at timestamptz NOT NULL DEFAULT now())"""
_SQLITE_MIGRATIONS_TABLE = """
CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL,
                                applied_at TEXT NOT NULL DEFAULT '')"""


@pytest.fixture(params=["postgres", "sqlite"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> LedgerDb:
    if request.param == "postgres":
        return LedgerDb("postgres", request.getfixturevalue("postgres_dsn"))
    return LedgerDb("sqlite", str(tmp_path / "ledger.db"))


async def schema(db: LedgerDb) -> tuple[set[str], set[str]]:
    if db.kind == "postgres":
        tables = await db.fetch("SELECT tablename AS name FROM pg_tables WHERE schemaname='public'")
        indexes = await db.fetch("SELECT indexname AS name FROM pg_indexes")
    else:
        tables = await db.fetch("SELECT name FROM sqlite_master WHERE type='table'")
        indexes = await db.fetch("SELECT name FROM sqlite_master WHERE type='index'")
    return {r["name"] for r in tables}, {r["name"] for r in indexes}


async def test_migrations_apply_once_and_rerun_cleanly(db: LedgerDb) -> None:
    sink = db.sink()
    assert await sink.migrate() == ALL
    assert await sink.migrate() == []
    await sink.close()
    again = db.sink()
    assert await again.migrate() == []
    await again.close()
    tables, indexes = await schema(db)
    assert tables >= TABLES
    assert indexes >= INDEXES
    versions = await db.fetch("SELECT version FROM schema_migrations")
    assert sorted(r["version"] for r in versions) == ALL


async def test_the_record_fields_are_the_table_columns_in_order(db: LedgerDb) -> None:
    """COPY and the SQLite inserts name COLUMNS, the record's fields: they are the table's."""
    sink = db.sink()
    await sink.migrate()
    await sink.close()
    if db.kind == "postgres":
        found = await db.fetch(
            "SELECT column_name AS name FROM information_schema.columns "
            "WHERE table_name = 'ai_requests' ORDER BY ordinal_position"
        )
    else:
        found = await db.fetch("SELECT name FROM pragma_table_info('ai_requests') ORDER BY cid")
    assert tuple(r["name"] for r in found) == COLUMNS


async def test_two_replicas_migrating_at_once(db: LedgerDb) -> None:
    sinks = [db.sink() for _ in range(3)]  # separate pools / connections and threads
    results = await asyncio.gather(*(sink.migrate() for sink in sinks))
    assert sorted(results) == [[], [], ALL]
    for sink in sinks:
        await sink.close()
    versions = await db.fetch("SELECT version FROM schema_migrations")
    assert sorted(r["version"] for r in versions) == ALL


async def test_the_user_and_tenant_indexes_serve_their_queries(postgres_dsn: str) -> None:
    db = LedgerDb("postgres", postgres_dsn)
    sink = db.sink()
    await sink.migrate()
    await sink.close()
    plan = await db.fetch(
        "EXPLAIN SELECT * FROM ai_requests WHERE user_id = 'u1' ORDER BY created_at DESC LIMIT 5"
    )
    text = "\n".join(r["QUERY PLAN"] for r in plan)
    assert "ai_requests_user_created" in text


def test_both_dialects_ship_the_same_versions() -> None:
    postgres, sqlite = load_migrations("postgres"), load_migrations("sqlite")
    assert [m.version for m in postgres] == [m.version for m in sqlite] == ALL
    assert [m.name for m in postgres] == [m.name for m in sqlite]
    statements = split_sqlite(sqlite[0].sql)
    assert len(statements) >= 9
    assert all(s.rstrip().endswith(";") for s in statements)


def run_migrate(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    names = {*ENV_FIELDS, "SIDECACHE_CONFIG"}
    environ = {k: v for k, v in os.environ.items() if k not in names}
    environ.update(PYTHONPATH=str(REPO), **env)
    return subprocess.run(
        [sys.executable, "-m", "proxy", "migrate"],
        env=environ,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_cli_migrate_on_sqlite(tmp_path: Path) -> None:
    path = tmp_path / "data" / "ledger.db"
    first = run_migrate(tmp_path, LEDGER_PATH=str(path))
    assert first.returncode == 0, first.stderr
    assert f"sqlite:{path}: applied 1" in first.stdout
    second = run_migrate(tmp_path, LEDGER_PATH=str(path))
    assert second.returncode == 0, second.stderr
    assert "already up to date" in second.stdout


def test_cli_migrate_on_postgres(postgres_dsn: str, tmp_path: Path) -> None:
    dsn = postgres_dsn.replace("postgres@", "postgres:not-a-real-secret@")  # trust auth
    done = run_migrate(tmp_path, DATABASE_URL=dsn)
    assert done.returncode == 0, done.stderr
    assert "applied 1" in done.stdout
    assert "not-a-real-secret" not in done.stdout + done.stderr
    assert not (tmp_path / "sidecache.db").exists()


def test_cli_migrate_fails_with_one_line_when_the_database_is_down(tmp_path: Path) -> None:
    from tests.fixtures.server_base import free_port

    dsn = f"postgresql://sc:hunter2-secret@127.0.0.1:{free_port()}/nowhere"
    failed = run_migrate(tmp_path, DATABASE_URL=dsn)
    assert failed.returncode == 1
    lines = failed.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sidecache: migrate failed:")
    assert "hunter2" not in failed.stderr + failed.stdout


async def migrated_upto(db: LedgerDb, version: int, *statements: str) -> None:
    """A ledger as an older release left it: the migrations up to `version`, then
    `statements` (its rows)."""
    dialect = "postgres" if db.kind == "postgres" else "sqlite"
    older = [m for m in load_migrations(dialect) if m.version <= version]
    if db.kind == "postgres":
        conn = await asyncpg.connect(db.target)
        try:
            await conn.execute(_PG_MIGRATIONS_TABLE)
            for m in older:
                await conn.execute(m.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations VALUES ($1, $2)", m.version, m.name
                )
            for statement in statements:
                await conn.execute(statement)
        finally:
            await conn.close()
    else:
        with sqlite3.connect(db.target) as conn:
            conn.execute(_SQLITE_MIGRATIONS_TABLE)
            for m in older:
                for statement in split_sqlite(m.sql):
                    conn.execute(statement)
                conn.execute("INSERT INTO schema_migrations VALUES (?, ?, '')", (m.version, m.name))
            for statement in statements:
                conn.execute(statement)


async def test_migration_007_keeps_the_budget_overrides(db: LedgerDb) -> None:
    """An override written before 007 keeps its limits and has no downgrade table of its own
    (NULL: the configured `[budget.downgrade_to]` applies); a table written after reads back."""
    await migrated_upto(
        db,
        6,
        "INSERT INTO budget_overrides (scope, subject, daily_usd) VALUES ('tenant', 't-old', 2.5)",
    )
    sink = db.sink()
    assert await sink.migrate() == [7]
    (old,) = await sink.fetch_overrides()
    assert (old.scope, old.subject, old.daily_usd, old.downgrade_to) == (
        "tenant",
        "t-old",
        2.5,
        None,
    )
    await db.execute(
        "INSERT INTO budget_overrides (scope, subject, downgrade_to) "
        """VALUES ('user', 'u-new', '{"o3*": "o4-mini"}')"""
    )
    tables = {row.subject: row.downgrade_to for row in await sink.fetch_overrides()}
    await sink.close()
    assert tables["t-old"] is None
    assert tables["u-new"] is not None
    assert msgspec.json.decode(tables["u-new"]) == {"o3*": "o4-mini"}


async def test_migration_004_over_a_003_ledger_keeps_its_rows(db: LedgerDb) -> None:
    """A ledger at 003 with rows in it: 004 adds the token kinds and the tier (0, 0 and NULL
    on the old rows and roll-ups), and both sinks write and roll up the new columns."""
    old_row = (
        "INSERT INTO ai_requests (id, tenant, persona, request_type, model, prompt_tokens, "
        "completion_tokens, cost, cache_hit, cache_status, status, created_at) VALUES "
        "('00000000-0000-0000-0000-000000000003', 't-old', '{}', 'chat.completions', 'm', 40, "
        "7, 0.5, {false}, 'MISS', 200, '2026-11-24T09:00:00.000000Z')"
    )
    old_rollup = (
        "INSERT INTO ai_usage_tenant_hourly (hour, tenant, model, request_type, requests, "
        "prompt_tokens, cost) VALUES ('2026-11-24T09:00:00.000000Z', 't-old', 'm', "
        "'chat.completions', 1, 40, 0.5)"
    )
    false = "false" if db.kind == "postgres" else "0"
    await migrated_upto(db, 3, old_row.replace("{false}", false), old_rollup)
    sink = db.sink()
    assert await sink.migrate() == [4, 5, 6, 7]
    records = make_records(20, seed=14)
    assert any(r.reasoning_tokens and r.cache_write_tokens for r in records)
    assert any(r.service_tier == "flex" for r in records)
    assert await sink.write([pack(r) for r in records]) == 20
    await sink.close()
    rows = await db.rows_by_id()
    old = rows["00000000-0000-0000-0000-000000000003"]
    assert (old["prompt_tokens"], old["completion_tokens"], old["cost"]) == (40, 7, 0.5)
    assert (old["cache_write_tokens"], old["reasoning_tokens"], old["service_tier"]) == (0, 0, None)
    for rec in records:
        row = rows[rec.id]
        assert (row["cache_write_tokens"], row["reasoning_tokens"], row["service_tier"]) == (
            rec.cache_write_tokens, rec.reasoning_tokens, rec.service_tier,
        )  # fmt: skip
    tenant_rollup = await db.fetch(
        "SELECT cache_write_tokens, reasoning_tokens, prompt_tokens FROM ai_usage_tenant_hourly "
        "WHERE tenant = 't-old'"
    )
    assert [tuple(r.values()) for r in tenant_rollup] == [(0, 0, 40)]
    for per in ("user", "tenant"):
        rollup = {k: v for k, v in (await db.rollup(per)).items() if k[1] != "t-old"}
        grouped = {k: v for k, v in (await db.grouped(per)).items() if k[1] != "t-old"}
        assert_rollup_matches(rollup, grouped)
