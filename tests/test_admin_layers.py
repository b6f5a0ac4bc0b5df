"""Both ledger sinks are `proxy.ledger.AdminLedger`s, the protocol admin reads and audits
through (that admin never imports a sink's module is import-linter's contract in `make lint`)."""

from __future__ import annotations

from pathlib import Path

from proxy.ledger import AdminLedger
from proxy.ledger.postgres import PostgresSink
from proxy.ledger.sqlite import SqliteSink


async def test_both_sinks_are_admin_ledgers(tmp_path: Path) -> None:
    postgres = PostgresSink("postgres://localhost/ledger")  # connects on first use only
    sqlite = SqliteSink(str(tmp_path / "ledger.db"))
    assert isinstance(postgres, AdminLedger) and isinstance(sqlite, AdminLedger)
    assert (postgres.name, sqlite.name) == ("postgres", "sqlite")
    await postgres.close()
    await sqlite.close()
