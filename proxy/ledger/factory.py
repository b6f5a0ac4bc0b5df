"""Builds the ledger from settings: Postgres when DATABASE_URL is set, else SQLite at
LEDGER_PATH; the journal at LEDGER_JOURNAL or next to LEDGER_PATH."""

from __future__ import annotations

import logging
from pathlib import Path

from proxy.ledger.journal import Journal
from proxy.ledger.postgres import PostgresSink
from proxy.ledger.sink import LedgerSink
from proxy.ledger.sqlite import SqliteSink
from proxy.ledger.writer import LedgerWriter
from proxy.settings import LedgerSettings, Settings

log = logging.getLogger("sidecache.ledger")


def journal_path(settings: LedgerSettings) -> Path:
    """LEDGER_JOURNAL, else LEDGER_PATH with the suffix `.ledger-journal`."""
    if settings.journal_path:
        return Path(settings.journal_path)
    return Path(settings.path).with_suffix(".ledger-journal")


def make_sink(settings: LedgerSettings, *, migrate: bool | None = None) -> LedgerSink:
    """`migrate`: apply migrations before the first write (default: migrate_on_start)."""
    auto = settings.migrate_on_start if migrate is None else migrate
    if settings.database_url:
        return PostgresSink(
            settings.database_url,
            migrate=auto,
            connect_timeout_s=settings.connect_timeout_s,
            pool_max_size=settings.pool_max_size,
        )
    return SqliteSink(settings.path, migrate=auto)


async def open_ledger(settings: Settings, *, start: bool = True) -> LedgerWriter:
    """The writer, its sink migrated (unless LEDGER_MIGRATE_ON_START=false) and its background
    task started. A database that is down at start-up does not stop the sidecar: records are
    journaled and migrations are retried before the first write."""
    ledger = settings.ledger
    sink = make_sink(ledger)
    writer = LedgerWriter(
        sink,
        Journal(journal_path(ledger)),
        batch_size=ledger.batch_size,
        flush_interval_s=ledger.flush_interval_s,
        queue_max=ledger.queue_max,
        retry_max_s=ledger.retry_max_s,
        enabled=ledger.enabled,
    )
    if ledger.migrate_on_start:
        try:
            applied = await sink.migrate()
        except Exception as exc:
            log.warning(
                "ledger: cannot migrate %s at start-up (%s: %s); will retry before writing",
                sink.description,
                type(exc).__name__,
                exc,
            )
        else:
            if applied:
                log.info("ledger: applied migrations %s to %s", applied, sink.description)
    if start:
        await writer.start()
    return writer


async def migrate_ledger(settings: Settings) -> tuple[str, list[int]]:
    """`sidecache migrate`: (where, versions applied). Raises when the database fails."""
    sink = make_sink(settings.ledger, migrate=False)
    try:
        return sink.description, await sink.migrate()
    finally:
        await sink.close()
