"""The SQLite ledger's writer process (proxy/ledger/sqlite_helper.py): killed mid-stream it
loses nothing and counts nothing twice, it ignores SIGTERM so a shutdown's last flush still
goes through it, and its answers keep the sink's contract (new rows counted, refusals poison)."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
from pathlib import Path

import msgspec
import pytest

from proxy.ledger.journal import Journal
from proxy.ledger.records import LedgerRecord, pack, packed_batch, unpack
from proxy.ledger.sqlite import SqliteSink
from proxy.ledger.writer import LedgerWriter
from tests.ledger_db import LedgerDb, make_records


def _writer_pid(sink: SqliteSink) -> int:
    proc = sink._writer._proc  # the process the sink started
    assert proc is not None and proc.returncode is None
    return proc.pid


async def test_a_killed_writer_process_loses_nothing(tmp_path: Path) -> None:
    db = LedgerDb("sqlite", str(tmp_path / "ledger.db"))
    sink = SqliteSink(db.target)
    writer = LedgerWriter(
        sink, Journal(tmp_path / "ledger.journal"), batch_size=100, retry_min_s=0.05
    )
    await writer.start()
    records = make_records(900, seed=31)
    for rec in records[:300]:
        writer.record(rec)
    await writer.flush()
    os.kill(_writer_pid(sink), signal.SIGKILL)
    await asyncio.sleep(0.1)
    for rec in records[300:]:
        writer.record(rec)
    await writer.flush()  # the first batch finds the process gone: journaled, then retried
    await writer.flush()
    await writer.close()
    assert await db.count() == 900
    assert set(await db.rows_by_id()) == {rec.id for rec in records}
    stats = writer.stats
    assert (stats.dropped, stats.rejected, stats.journal_pending) == (0, 0, 0)
    assert stats.written + stats.duplicates == 900


async def test_the_writer_process_ignores_sigterm(tmp_path: Path) -> None:
    sink = SqliteSink(str(tmp_path / "ledger.db"))
    records = list(map(pack, make_records(20, seed=32)))
    assert await sink.write(records[:10]) == 10
    os.kill(_writer_pid(sink), signal.SIGTERM)  # as a shutdown signalling the process group
    await asyncio.sleep(0.2)
    assert await sink.write(records[10:]) == 10
    await sink.close()


async def test_replays_and_refusals_keep_the_sink_contract(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    sink = SqliteSink(str(path))
    records = make_records(50, seed=33)
    packed = list(map(pack, records))
    assert await sink.write(packed[:30]) == 30
    assert await sink.write(packed[20:] + packed[40:]) == 20  # 10 known, 10 twice
    bad = msgspec.structs.replace(records[0], id="f" * 36, tenant=None)
    with pytest.raises(sqlite3.IntegrityError) as refused:
        await sink.write([pack(bad)])
    assert sink.is_poison(refused.value)
    await sink.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT count(*) FROM ai_requests").fetchone() == (50,)
        assert conn.execute("SELECT sum(requests) FROM ai_usage_hourly").fetchone() == (50,)


def test_records_cross_the_pipe_unchanged() -> None:
    records = make_records(40, seed=34)
    sent = unpack(packed_batch(list(map(pack, records))))
    fields = LedgerRecord.__struct_fields__
    assert [[getattr(r, f) for f in fields] for r in sent] == [
        [getattr(r, f) for f in fields] for r in records
    ]
