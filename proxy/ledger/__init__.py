"""The cost ledger (docs/design.md §5): prices, records, the buffered writer and its sinks.

The names below are imported on first use (PEP 562), so that the SQLite writer process
(`python -m proxy.ledger.sqlite_helper`) loads only what it needs, not the Postgres driver.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from proxy.ledger.factory import journal_path, make_sink, migrate_ledger, open_ledger
    from proxy.ledger.pricing import ModelPrice, PriceTable
    from proxy.ledger.records import COLUMNS, BudgetOverride, LedgerRecord, new_record_id
    from proxy.ledger.sink import AdminLedger, LedgerSink
    from proxy.ledger.stats import WriterStats
    from proxy.ledger.writer import LedgerWriter

_SOURCES = {
    "COLUMNS": "proxy.ledger.records",
    "AdminLedger": "proxy.ledger.sink",
    "BudgetOverride": "proxy.ledger.records",
    "LedgerRecord": "proxy.ledger.records",
    "LedgerSink": "proxy.ledger.sink",
    "LedgerWriter": "proxy.ledger.writer",
    "ModelPrice": "proxy.ledger.pricing",
    "PriceTable": "proxy.ledger.pricing",
    "WriterStats": "proxy.ledger.stats",
    "journal_path": "proxy.ledger.factory",
    "make_sink": "proxy.ledger.factory",
    "migrate_ledger": "proxy.ledger.factory",
    "new_record_id": "proxy.ledger.records",
    "open_ledger": "proxy.ledger.factory",
}
__all__ = [
    "COLUMNS",
    "AdminLedger",
    "BudgetOverride",
    "LedgerRecord",
    "LedgerSink",
    "LedgerWriter",
    "ModelPrice",
    "PriceTable",
    "WriterStats",
    "journal_path",
    "make_sink",
    "migrate_ledger",
    "new_record_id",
    "open_ledger",
]


def __getattr__(name: str) -> Any:
    source = _SOURCES.get(name)
    if source is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(source), name)
    globals()[name] = value
    return value
