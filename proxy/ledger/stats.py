"""What the ledger writer reports of itself: its counters, as metrics and the admin overview
read them."""

from __future__ import annotations

import msgspec


class WriterStats(msgspec.Struct, frozen=True):
    sink: str
    sink_up: bool
    queued: int  # in memory, waiting for a flush
    written: int  # rows the database took as new
    duplicates: int  # records it already had (a replay of something it had taken)
    journaled: int  # records appended to the journal
    replayed: int  # journaled records since handed to the database
    journal_pending: int  # records in the journal now
    dropped: int  # refused because the queue was full
    rejected: int  # refused by the database as bad data; kept in the rejects file
    failures: int  # failed attempts to reach the database
