"""The admin package reads the ledger through `proxy.ledger.AdminLedger`, never through a
concrete sink's module, and both sinks are AdminLedgers."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from proxy.ledger import AdminLedger
from proxy.ledger.postgres import PostgresSink
from proxy.ledger.sqlite import SqliteSink

ADMIN = Path(__file__).resolve().parent.parent / "admin"
SINK_MODULES = ("proxy.ledger.postgres", "proxy.ledger.sqlite")  # sqlite_helper, _rows, _sql too


def imported_names(source: str) -> Iterator[str]:
    """Every module (or module.name) an `import` or `from … import` of `source` names."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.module
            yield from (f"{node.module}.{alias.name}" for alias in node.names)


@pytest.mark.parametrize("path", sorted(ADMIN.rglob("*.py")), ids=lambda p: p.name)
def test_admin_does_not_import_a_ledger_sink(path: Path) -> None:
    found = [n for n in imported_names(path.read_text()) if n.startswith(SINK_MODULES)]
    assert found == []


async def test_both_sinks_are_admin_ledgers(tmp_path: Path) -> None:
    postgres = PostgresSink("postgres://localhost/ledger")  # connects on first use only
    sqlite = SqliteSink(str(tmp_path / "ledger.db"))
    assert isinstance(postgres, AdminLedger) and isinstance(sqlite, AdminLedger)
    assert (postgres.name, sqlite.name) == ("postgres", "sqlite")
    await postgres.close()
    await sqlite.close()
