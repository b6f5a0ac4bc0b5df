"""`open_ledger(settings)` (docs/design.md §2, §5): Postgres when DATABASE_URL is set, else SQLite
at LEDGER_PATH; migrations at start-up unless disabled; a database that is down at start-up does not
stop the sidecar; the journal where LEDGER_JOURNAL says."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from proxy.ledger.factory import journal_path, migrate_ledger, open_ledger
from proxy.settings_load import load_settings
from tests.fixtures.server_base import free_port
from tests.ledger_db import LedgerDb, make_records


async def test_sqlite_at_ledger_path_by_default(tmp_path: Path) -> None:
    path = tmp_path / "data" / "ledger.db"
    settings = load_settings({"LEDGER_PATH": str(path)})
    writer = await open_ledger(settings)
    assert writer.sink.name == "sqlite"
    assert writer.journal.path == tmp_path / "data" / "ledger.ledger-journal"
    db = LedgerDb("sqlite", str(path))
    assert await db.count() == 0  # migrated at start-up: the table is there
    for rec in make_records(40):
        writer.record(rec)
    await writer.close()
    assert await db.count() == 40


async def test_postgres_when_database_url_is_set(postgres_dsn: str, tmp_path: Path) -> None:
    settings = load_settings(
        {"DATABASE_URL": postgres_dsn, "LEDGER_JOURNAL": str(tmp_path / "j" / "pg.journal")}
    )
    writer = await open_ledger(settings)
    assert writer.sink.name == "postgres"
    assert writer.journal.path == tmp_path / "j" / "pg.journal"
    assert "postgres@" not in writer.sink.description  # no user (or password) in logs
    for rec in make_records(40):
        writer.record(rec)
    await writer.close()
    assert await LedgerDb("postgres", postgres_dsn).count() == 40


async def test_a_database_down_at_start_up_is_journaled(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    dsn = f"postgresql://sc:pw-not-logged@127.0.0.1:{free_port()}/ledger"
    settings = load_settings({"DATABASE_URL": dsn, "LEDGER_PATH": str(tmp_path / "x.db")})
    with caplog.at_level(logging.WARNING, "sidecache.ledger"):
        writer = await open_ledger(settings)
        for rec in make_records(25):
            writer.record(rec)
        await writer.close(timeout_s=5)
    assert writer.stats.journaled == 25
    assert journal_path(settings.ledger).stat().st_size > 0
    assert "cannot migrate" in caplog.text and "pw-not-logged" not in caplog.text


async def test_without_migrations_records_wait_in_the_journal(tmp_path: Path) -> None:
    env = {"LEDGER_PATH": str(tmp_path / "ledger.db"), "LEDGER_MIGRATE_ON_START": "false"}
    settings = load_settings(env)
    assert settings.ledger.migrate_on_start is False
    writer = await open_ledger(settings)
    records = make_records(30)
    for rec in records[:20]:
        writer.record(rec)
    await writer.flush()
    assert writer.stats.journal_pending == 20  # no tables yet: nothing can be written
    # The operator runs `sidecache migrate`.
    assert (await migrate_ledger(settings))[1] == [1, 2, 3, 4, 5, 6, 7]
    for rec in records[20:]:
        writer.record(rec)
    await writer.close()
    assert writer.stats.replayed == 20
    assert await LedgerDb("sqlite", str(tmp_path / "ledger.db")).count() == 30
