"""The ledger writer's contract on both sinks (docs/design.md §5, §8): exactly one row per record
with the right fields, roll-ups equal to the rows summed, idempotent by record id, nothing left
behind by close(), bad data set aside instead of blocking the rest."""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgspec
import pytest

from proxy.ledger.journal import Journal
from proxy.ledger.records import LedgerRecord, new_record_id, pack
from proxy.ledger.writer import LedgerWriter
from tests.ledger_db import LedgerDb, assert_rollup_matches, make_records


@pytest.fixture(params=["postgres", "sqlite"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> LedgerDb:
    if request.param == "postgres":
        return LedgerDb("postgres", request.getfixturevalue("postgres_dsn"))
    return LedgerDb("sqlite", str(tmp_path / "ledger.db"))


def writer_for(db: LedgerDb, tmp_path: Path, **kwargs: float) -> LedgerWriter:
    options = {"batch_size": 200, "flush_interval_s": 0.05, **kwargs}
    return LedgerWriter(db.sink(), Journal(tmp_path / "ledger.journal"), **options)  # type: ignore[arg-type]


async def test_exactly_one_row_per_record_with_its_fields(db: LedgerDb, tmp_path: Path) -> None:
    records = make_records(1234)
    writer = writer_for(db, tmp_path)
    await writer.start()
    for rec in records:
        writer.record(rec)
    await writer.flush()
    rows = await db.rows_by_id()
    assert await db.count() == len(records) == len(rows)
    for rec in records:
        row = rows[rec.id]
        persona = msgspec.json.decode(row["persona"])  # jsonb and SQLite both read as text
        created = row["created_at"]
        if isinstance(created, str):
            created = msgspec.convert(created, type(rec.created_at))
        assert (row["tenant"], row["user_id"], persona) == (rec.tenant, rec.user_id, rec.persona)
        assert (row["request_type"], row["model"]) == (rec.request_type, rec.model)
        assert (row["prompt_tokens"], row["completion_tokens"], row["cached_tokens"]) == (
            rec.prompt_tokens,
            rec.completion_tokens,
            rec.cached_tokens,
        )
        assert row["cost"] == pytest.approx(rec.cost, abs=1e-15)
        assert row["saved_cost"] == pytest.approx(rec.saved_cost, abs=1e-15)
        assert row["response_time_ms"] == pytest.approx(rec.response_time_ms)
        assert row["upstream_ms"] == pytest.approx(rec.upstream_ms)
        assert bool(row["cache_hit"]) is rec.cache_hit
        assert (row["cache_status"], row["status"], created) == (
            rec.cache_status,
            rec.status,
            rec.created_at,
        )
    stats = writer.stats
    assert (stats.written, stats.journaled, stats.dropped, stats.queued) == (1234, 0, 0, 0)
    await writer.close()


async def test_rollups_equal_the_rows_summed(db: LedgerDb, tmp_path: Path) -> None:
    writer = writer_for(db, tmp_path, batch_size=97)
    await writer.start()
    for rec in make_records(2000, seed=11):
        writer.record(rec)
    await writer.close()
    rollup, grouped = await db.rollup(), await db.grouped()
    assert len(grouped) > 50  # many (hour, tenant, user, model, kind) groups, not one
    assert_rollup_matches(rollup, grouped)
    assert_rollup_matches(await db.rollup("tenant"), await db.grouped("tenant"))
    assert sum(v["requests"] for v in rollup.values()) == 2000


async def test_a_replayed_batch_does_not_double_count(db: LedgerDb) -> None:
    sink = db.sink()
    batch = list(map(pack, make_records(300, seed=3)))
    assert await sink.write(batch) == 300
    before = await db.rollup()
    # The same batch again (a journal replay after a crash), and again mixed with new records.
    assert await sink.write(batch) == 0
    fresh = list(map(pack, make_records(50, seed=4)))
    assert await sink.write(batch[:100] + fresh) == 50
    assert await db.count() == 350
    after = await db.rollup()
    assert sum(v["requests"] for v in after.values()) == 350
    assert_rollup_matches(after, await db.grouped())
    assert sum(v["requests"] for v in before.values()) == 300
    await sink.close()


async def test_duplicate_ids_inside_one_batch_count_once(db: LedgerDb) -> None:
    sink = db.sink()
    rec = pack(make_records(1)[0])
    assert await sink.write([rec, rec, rec]) == 1
    rollup = await db.rollup()
    assert [v["requests"] for v in rollup.values()] == [1]
    await sink.close()


async def test_close_flushes_everything_queued(db: LedgerDb, tmp_path: Path) -> None:
    writer = writer_for(db, tmp_path, flush_interval_s=3600, batch_size=10_000)
    await writer.start()
    for rec in make_records(777, seed=5):
        writer.record(rec)
    assert writer.stats.queued == 777
    await writer.close()
    assert await db.count() == 777
    assert writer.stats.queued == 0
    await writer.close()  # a second close is harmless


async def test_background_task_flushes_by_time_and_by_size(db: LedgerDb, tmp_path: Path) -> None:
    writer = writer_for(db, tmp_path, batch_size=100, flush_interval_s=0.2)
    await writer.start()
    for rec in make_records(250, seed=6):
        writer.record(rec)
    # Two full batches go at once (size); the last 50 within one interval (time).
    for _ in range(100):
        if writer.stats.written == 250:
            break
        await asyncio.sleep(0.02)
    assert writer.stats.written == 250
    assert await db.count() == 250
    await writer.close()


async def test_bad_data_is_set_aside_and_the_rest_written(db: LedgerDb, tmp_path: Path) -> None:
    writer = writer_for(db, tmp_path)
    await writer.start()
    good = make_records(20, seed=8)
    bad = LedgerRecord(
        id=new_record_id(),
        tenant="t",
        user_id=None,
        persona={},
        request_type="embeddings",
        model="m",
        status=None,  # type: ignore[arg-type]
    )
    for rec in [*good[:10], bad, *good[10:]]:
        writer.record(rec)
    await writer.flush()
    assert await db.count() == 20
    assert writer.stats.rejected == 1
    assert writer.journal.pending is False
    # Kept as a journal frame of packed records (fields in order, id first); its status is
    # not even an int, so it is read untyped.
    kept = msgspec.msgpack.decode(writer.rejects.path.read_bytes()[8:])
    assert [r[0] for r in kept] == [bad.id]
    await writer.close()


async def test_a_value_refused_in_the_middle_of_a_batch_costs_only_its_record(
    db: LedgerDb, tmp_path: Path
) -> None:
    """2**63 packs (msgpack holds it) but fits no integer column: PostgreSQL's COPY fails while
    rows stream, SQLite cannot bind it. The batch is retried record by record and the
    connection keeps working for the next one."""
    writer = writer_for(db, tmp_path)
    await writer.start()
    records = make_records(41, seed=9)
    huge = msgspec.structs.replace(records[20], prompt_tokens=2**63)
    for rec in [*records[:20], huge, *records[21:30]]:
        writer.record(rec)
    await writer.flush()
    assert (await db.count(), writer.stats.rejected) == (29, 1)
    for rec in records[30:]:
        writer.record(rec)
    await writer.flush()
    await writer.close()
    assert set(await db.rows_by_id()) == {rec.id for rec in records} - {huge.id}
    assert writer.stats.written == 40 and writer.stats.failures == 0


async def test_text_the_database_cannot_hold_is_cleaned(db: LedgerDb, tmp_path: Path) -> None:
    rec = LedgerRecord(
        id=new_record_id(),
        tenant="t",
        user_id="u\x00ser\udcff",  # a NUL, and an undecodable header byte kept by aiohttp
        persona={"interests": "a\x00b"},
        request_type="chat.completions",
        model="gpt\x00-4o-mini",
    )
    sink = db.sink()
    assert await sink.write([pack(rec)]) == 1
    row = (await db.rows_by_id())[rec.id]
    assert (row["user_id"], row["model"]) == ("user?", "gpt-4o-mini")
    await sink.close()
