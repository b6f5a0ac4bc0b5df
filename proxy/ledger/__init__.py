"""The cost ledger (DESIGN §5): prices, records, the buffered writer and its sinks."""

from proxy.ledger.factory import journal_path, make_sink, migrate_ledger, open_ledger
from proxy.ledger.pricing import ModelPrice, PriceTable
from proxy.ledger.records import BudgetOverride, LedgerRecord, new_record_id
from proxy.ledger.writer import LedgerWriter, WriterStats

__all__ = [
    "BudgetOverride",
    "LedgerRecord",
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
