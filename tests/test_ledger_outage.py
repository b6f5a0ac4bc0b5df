"""Nothing is lost and nothing counted twice when the database goes away (docs/design.md §5, §7):
a real PostgreSQL stopped mid-stream and started again, close() with it down, a crash in the
middle of a replay, a torn journal tail, and a full queue."""

from __future__ import annotations

import asyncio
import logging
import os
import struct
import time
import zlib
from pathlib import Path

import msgspec
import pytest
from prometheus_client import CollectorRegistry

from proxy.ledger.collector import register_ledger_metrics
from proxy.ledger.journal import Journal, encode_frame, read_frames
from proxy.ledger.postgres import PostgresSink
from proxy.ledger.records import COLUMNS, BudgetOverride, LedgerRecord, pack, packed_batch, unpack
from proxy.ledger.sink import LedgerSink
from proxy.ledger.writer import LedgerWriter
from tests.fixtures.servers import PostgresServer
from tests.ledger_db import LedgerDb, assert_rollup_matches, make_records


class FlakySink:
    """A real sink that can be made to fail like an unreachable database."""

    def __init__(self, inner: LedgerSink, *, fail_after: int | None = None) -> None:
        self.inner = inner
        self.fail_after = fail_after  # writes allowed before every later one fails
        self.writes = 0

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def description(self) -> str:
        return "flaky " + self.inner.description

    async def migrate(self) -> list[int]:
        return await self.inner.migrate()

    async def write(self, records: list[bytes]) -> int:
        if self.fail_after is not None and self.writes >= self.fail_after:
            raise ConnectionRefusedError("database unreachable (test)")
        self.writes += 1
        return await self.inner.write(records)

    def is_poison(self, exc: BaseException) -> bool:
        return self.inner.is_poison(exc)

    async def fetch_overrides(self) -> list[BudgetOverride]:
        return await self.inner.fetch_overrides()

    async def close(self) -> None:
        await self.inner.close()


@pytest.fixture(params=["postgres", "sqlite"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> LedgerDb:
    if request.param == "postgres":
        return LedgerDb("postgres", request.getfixturevalue("postgres_dsn"))
    return LedgerDb("sqlite", str(tmp_path / "ledger.db"))


async def wait_for(condition: object, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


async def test_postgres_stopped_mid_stream_loses_nothing(
    private_postgres: PostgresServer, tmp_path: Path
) -> None:
    dsn = private_postgres.dsn
    journal = Journal(tmp_path / "ledger.journal")
    writer = LedgerWriter(
        PostgresSink(dsn, connect_timeout_s=2),
        journal,
        batch_size=100,
        flush_interval_s=0.05,
        retry_min_s=0.05,
        retry_max_s=0.2,
    )
    await writer.start()
    records = make_records(3000, seed=21)

    async def stream(part: list[LedgerRecord]) -> None:
        for n, rec in enumerate(part):
            writer.record(rec)
            if n % 50 == 0:
                await asyncio.sleep(0.005)

    await stream(records[:1000])
    await asyncio.to_thread(private_postgres.stop)
    await stream(records[1000:2000])
    await writer.flush()
    assert writer.stats.sink_up is False
    assert writer.stats.journal_pending > 0
    await asyncio.to_thread(private_postgres.start)
    await stream(records[2000:])
    await wait_for(lambda: writer.stats.journal_pending == 0 and writer.stats.queued == 0)
    await writer.close()

    db = LedgerDb("postgres", dsn)
    assert await db.count() == 3000
    assert set(await db.rows_by_id()) == {rec.id for rec in records}
    assert_rollup_matches(await db.rollup(), await db.grouped())
    assert_rollup_matches(await db.rollup("tenant"), await db.grouped("tenant"))
    stats = writer.stats
    assert stats.replayed >= 1 and stats.journaled >= 1
    assert stats.written + stats.duplicates == 3000
    assert (stats.dropped, stats.rejected) == (0, 0)
    assert journal.path.stat().st_size == 0


async def test_close_with_postgres_down_journals_and_next_writer_replays(
    private_postgres: PostgresServer, tmp_path: Path
) -> None:
    dsn = private_postgres.dsn
    path = tmp_path / "ledger.journal"
    records = make_records(1200, seed=22)
    writer = LedgerWriter(PostgresSink(dsn, connect_timeout_s=1), Journal(path), batch_size=250)
    await writer.start()
    for rec in records[:500]:
        writer.record(rec)
    await writer.flush()
    await asyncio.to_thread(private_postgres.stop)
    for rec in records[500:]:
        writer.record(rec)
    await writer.close(timeout_s=5)
    assert (writer.stats.journaled, writer.stats.journal_pending) == (700, 700)
    writer.record(records[0])  # after close: straight to the journal, not lost
    assert writer.stats.journal_pending == 701

    await asyncio.to_thread(private_postgres.start)
    again = LedgerWriter(PostgresSink(dsn), Journal(path), batch_size=250)
    await again.start()
    assert again.stats.journal_pending == 701
    await again.flush()
    assert (again.stats.replayed, again.stats.written, again.stats.duplicates) == (701, 700, 1)
    await again.close()
    db = LedgerDb("postgres", dsn)
    assert await db.count() == 1200
    assert_rollup_matches(await db.rollup(), await db.grouped())
    assert_rollup_matches(await db.rollup("tenant"), await db.grouped("tenant"))
    assert path.stat().st_size == 0


async def test_a_crash_in_the_middle_of_a_replay_double_counts_nothing(
    db: LedgerDb, tmp_path: Path
) -> None:
    path = tmp_path / "ledger.journal"
    records = make_records(1000, seed=23)
    down = FlakySink(db.sink(), fail_after=0)
    writer = LedgerWriter(down, Journal(path), batch_size=200)
    await writer.start()
    for rec in records:
        writer.record(rec)
    await writer.flush()
    assert writer.stats.journal_pending == 1000  # five frames of 200
    # The database comes back but the process dies after two frames of the replay.
    down.fail_after = 2
    await writer.flush()
    assert writer.stats.replayed == 400
    assert await db.count() == 400
    del writer  # a crash: no close(), the journal still holds all five frames

    again = LedgerWriter(db.sink(), Journal(path), batch_size=200)
    await again.start()
    await again.flush()
    assert (again.stats.replayed, again.stats.duplicates, again.stats.written) == (1000, 400, 600)
    await again.close()
    assert await db.count() == 1000
    assert_rollup_matches(await db.rollup(), await db.grouped())
    assert_rollup_matches(await db.rollup("tenant"), await db.grouped("tenant"))
    assert sum(v["requests"] for v in (await db.rollup()).values()) == 1000


async def test_a_torn_journal_tail_is_cut_and_the_rest_replayed(
    db: LedgerDb, tmp_path: Path
) -> None:
    path = tmp_path / "ledger.journal"
    records = list(map(pack, make_records(30, seed=24)))
    with path.open("wb") as fh:
        fh.write(encode_frame(records[:10]) + encode_frame(records[10:20]))
        fh.write(encode_frame(records[20:])[:-7])  # a crash in the middle of an append
    whole = len(encode_frame(records[:10]) + encode_frame(records[10:20]))
    writer = LedgerWriter(db.sink(), Journal(path))
    await writer.start()
    assert writer.stats.journal_pending == 20
    assert path.stat().st_size == whole
    await writer.flush()
    await writer.close()
    assert await db.count() == 20
    assert path.stat().st_size == 0


def journal_frame(payload: bytes) -> bytes:
    return struct.pack(">II", len(payload), zlib.crc32(payload)) + payload


async def replay_journal(db: LedgerDb, path: Path, count: int) -> LedgerWriter:
    """Has a writer replay the journal at `path` (of `count` records) into `db`."""
    writer = LedgerWriter(db.sink(), Journal(path))
    await writer.start()
    assert writer.stats.journal_pending == count
    await writer.flush()
    await writer.close()
    return writer


async def test_a_journal_of_records_as_maps_is_still_replayed(db: LedgerDb, tmp_path: Path) -> None:
    """Journals written before records were packed hold each record as a msgpack map."""
    path = tmp_path / "ledger.journal"
    records = make_records(12, seed=27)
    path.write_bytes(journal_frame(msgspec.msgpack.encode(records)))
    await replay_journal(db, path, 12)
    assert set(await db.rows_by_id()) == {rec.id for rec in records}
    assert path.stat().st_size == 0


async def test_a_journal_of_records_in_the_earlier_field_order_is_still_replayed(
    db: LedgerDb, tmp_path: Path
) -> None:
    """Journals written before the record's fields took the table's order hold arrays with
    request_type and model before user_id and persona."""
    path = tmp_path / "ledger.journal"
    records = make_records(12, seed=28)
    earlier = ("id", "tenant", "request_type", "model", "user_id", "persona")
    # by migrations 003 and 004, long after that format
    appended = COLUMNS[COLUMNS.index("cache_match") :]
    rest = [name for name in COLUMNS if name not in (*earlier, *appended)]
    payload = msgspec.msgpack.encode(
        [[getattr(rec, name) for name in (*earlier, *rest)] for rec in records]
    )
    path.write_bytes(journal_frame(payload))
    writer = await replay_journal(db, path, 12)
    rows = await db.rows_by_id()
    assert writer.stats.rejected == 0
    assert {rec.id: (rec.user_id, rec.request_type, rec.model) for rec in records} == {
        key: (row["user_id"], row["request_type"], row["model"]) for key, row in rows.items()
    }
    assert path.stat().st_size == 0


async def test_unreadable_journal_bytes_are_kept_aside(db: LedgerDb, tmp_path: Path) -> None:
    path = tmp_path / "ledger.journal"
    records = list(map(pack, make_records(10, seed=25)))
    journal = Journal(path)
    await journal.open()
    await journal.append(records[:5])
    writer = LedgerWriter(db.sink(), journal)
    # Damage that open() did not see: appended after it, as a bad disk might.
    journal.append_sync(b"\x00\x00\x00\x05garbage")
    await writer.flush()
    await writer.close()
    assert await db.count() == 5
    kept = [p for p in os.listdir(tmp_path) if p.startswith("ledger.journal.corrupt-")]
    assert len(kept) == 1
    assert (tmp_path / kept[0]).read_bytes() == b"\x00\x00\x00\x05garbage"


async def test_a_full_queue_drops_counts_and_warns_once(
    db: LedgerDb, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    writer = LedgerWriter(db.sink(), Journal(tmp_path / "j"), queue_max=10)
    registry = CollectorRegistry()
    register_ledger_metrics(registry, writer=writer)
    with caplog.at_level(logging.WARNING, "sidecache.ledger"):
        for rec in make_records(25, seed=26):
            writer.record(rec)
    assert (writer.stats.queued, writer.stats.dropped) == (10, 15)
    assert len([r for r in caplog.records if "queue full" in r.getMessage()]) == 1
    dropped = registry.get_sample_value("sidecache_ledger_records_total", {"outcome": "dropped"})
    assert dropped == 15
    await writer.close()
    assert await db.count() == 10


def test_a_record_with_lone_surrogates_is_journaled_cleaned(tmp_path: Path) -> None:
    """aiohttp keeps undecodable header bytes as lone surrogates, which msgpack refuses: the
    journal stores such a record as the database would, instead of losing its batch."""
    record = msgspec.structs.replace(
        make_records(1)[0], user_id="u\udcff1", model="gpt\ud800", persona={"tone": "x\udc80"}
    )
    path = tmp_path / "journal"
    path.write_bytes(encode_frame(list(map(pack, [record, *make_records(2, seed=3)]))))
    with path.open("rb") as fh:
        (_, packed), *rest = list(read_frames(fh))
    back = unpack(packed_batch(packed))
    assert rest == [] and len(back) == 3
    assert (back[0].user_id, back[0].model, back[0].persona) == ("u?1", "gpt?", {"tone": "x?"})
    assert back[0].id == record.id
