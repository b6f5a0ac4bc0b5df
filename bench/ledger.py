"""Ledger ingest: rows/s through the PostgresSink (COPY into a staging table, then insert the new
ids and upsert the hourly roll-ups, one transaction per batch of the product's default size)
against one autocommit `INSERT` per row (`execute` per row, no roll-up: what an application
writing its ledger naively does), on a private PostgreSQL started here; three runs of each
alternate, and the best of each is compared (a burst of other work on the machine hits both
alike). A second row compares like with like: per row, the very statement a flush runs (insert
if new, roll-up upserts), with one row's VALUES instead of the staging table. A third row times
the COPY step alone, to show where a flush's time goes, and a fourth the same flushes in smaller
batches (each flush has a fixed cost: round trips, one WAL flush at commit, and less overlap
between the client's encoding and the server's parsing).

The server keeps PostgreSQL's production durability defaults (fsync, synchronous_commit and
full_page_writes on) with its data on this machine's disk, so each commit waits for its WAL
flush as on a real server: once per batch for COPY, once per row for the INSERTs. The last row
gives the same ratio on a server with the test fixture's settings (fsync and synchronous_commit
off, data in /dev/shm), where a commit costs nothing, for comparison.

Records are varied (2 tenants, 4 users, 3 models, 4 request types, hits and misses) and stamped
in arrival order, as live traffic is. Standalone: `python -m bench.ledger [--quick]`.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Sequence
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import msgspec

from proxy.ledger.postgres import _INSERT as FLUSH_SQL
from proxy.ledger.postgres import STAGE, PostgresSink, init_connection
from proxy.ledger.records import COLUMNS, LedgerRecord, as_row, pack
from proxy.settings import LedgerSettings
from tests.fixtures.postgres_server import PostgresServer
from tests.ledger_db import make_records

from .procs import HarnessError
from .report import Check, Row, run_standalone
from .stack import Bench

TARGET_RATIO = 20.0
BATCH = LedgerSettings().batch_size  # the product's default flush size
SMALL_BATCH = 1000
ROUNDS = 3
_COPY_ROWS, _INSERT_ROWS = 100_000, 10_000
_VALUES = f"VALUES ({', '.join(f'${n}' for n in range(1, len(COLUMNS) + 1))})"
_INSERT = f"INSERT INTO ai_requests ({', '.join(COLUMNS)}) {_VALUES}"
_INSERT_AND_ROLL = FLUSH_SQL.replace(f"SELECT {', '.join(COLUMNS)} FROM {STAGE}", _VALUES)


def _live(n: int, seed: int) -> list[LedgerRecord]:
    """Varied records stamped in arrival order, 0.1 ms apart, as live traffic is."""
    start = datetime.now(UTC)
    return [
        msgspec.structs.replace(rec, created_at=start + timedelta(microseconds=100 * i))
        for i, rec in enumerate(make_records(n, seed=seed))
    ]


async def _copy_rate(dsn: str, records: list[LedgerRecord], batch: int = BATCH) -> float:
    """The sink's rate from packed records, as the writer queues them (unpacking is timed)."""
    packed = list(map(pack, records))
    sink = PostgresSink(dsn)
    await sink.write(packed[:batch])  # migrations, pool and staging table: not timed
    timed = packed[batch:]
    started = time.perf_counter()
    for start in range(0, len(timed), batch):
        await sink.write(timed[start : start + batch])
    elapsed = time.perf_counter() - started
    await sink.close()
    return len(timed) / elapsed


async def _copy_only_rate(dsn: str, records: list[LedgerRecord]) -> float:
    """COPY into the staging table only (rolled back): the floor of a flush's cost."""
    conn: Any = await asyncpg.connect(dsn)
    try:
        await init_connection(conn)
        rows = [as_row(rec) for rec in records]
        elapsed = 0.0
        for start in range(0, len(rows), BATCH):
            transaction = conn.transaction()
            await transaction.start()
            began = time.perf_counter()
            await conn.copy_records_to_table(
                STAGE, records=rows[start : start + BATCH], columns=COLUMNS
            )
            elapsed += time.perf_counter() - began
            await transaction.rollback()
    finally:
        await conn.close()
    return len(rows) / elapsed


async def _row_rate(dsn: str, sql: str, records: list[LedgerRecord]) -> float:
    conn: Any = await asyncpg.connect(dsn)
    try:
        await init_connection(conn)
        rows = [as_row(rec) for rec in records]
        await conn.execute(sql, *rows[0])  # statement prepared: not timed
        started = time.perf_counter()
        for row in rows[1:]:
            await conn.execute(sql, *row)
        elapsed = time.perf_counter() - started
    finally:
        await conn.close()
    return (len(rows) - 1) / elapsed


async def _measure(dsn: str, copy_rows: int, row_rows: int, *, details: bool) -> list[float]:
    """COPY and row-INSERT rates (the best of ROUNDS alternating runs of each, so a burst of
    other work on the machine hits both alike), then (`details`) same-work, COPY-only and
    small-batch rates; the last figure is the number of rows the database holds, to check that
    nothing was lost."""
    assert _INSERT_AND_ROLL != FLUSH_SQL
    copy_rates, insert_rates = [], []
    for n in range(ROUNDS):
        copy_rates.append(await _copy_rate(dsn, _live(copy_rows + BATCH, seed=10 + n)))
        insert_rates.append(await _row_rate(dsn, _INSERT, _live(row_rows + 1, seed=20 + n)))
    rates = [max(copy_rates), max(insert_rates)]
    if details:
        rates.append(await _row_rate(dsn, _INSERT_AND_ROLL, _live(row_rows + 1, seed=3)))
        rates.append(await _copy_only_rate(dsn, _live(copy_rows // 2, seed=4)))
        small = _live(copy_rows // 2 + SMALL_BATCH, seed=5)
        rates.append(await _copy_rate(dsn, small, SMALL_BATCH))
    conn: Any = await asyncpg.connect(dsn)
    try:
        rates.append(await conn.fetchval("SELECT count(*) FROM ai_requests"))
    finally:
        await conn.close()
    return rates


def _run_on_server(
    stack: ExitStack, copy_rows: int, row_rows: int, *, durable: bool
) -> list[float]:
    try:
        server = stack.enter_context(PostgresServer(durable=durable))
    except (RuntimeError, OSError, KeyError) as err:
        raise HarnessError(f"cannot start a private PostgreSQL: {err}") from err
    *rates, stored = asyncio.run(_measure(server.dsn, copy_rows, row_rows, details=durable))
    expected = ROUNDS * (copy_rows + BATCH + row_rows + 1) + (row_rows + 1 if durable else 0)
    if durable:
        expected += copy_rows // 2 + SMALL_BATCH
    if stored != expected:
        raise HarnessError(f"the ledger bench stored {stored} rows, not {expected}")
    server.close()
    return rates


def measure_ingest(stack: ExitStack, scale: float) -> list[Row]:
    copy_rows = max(int(_COPY_ROWS * scale), 5 * BATCH)
    insert_rows = max(int(_INSERT_ROWS * scale), 1000)
    copy_rate, insert_rate, same_rate, copy_only, small_rate = _run_on_server(
        stack, copy_rows, insert_rows, durable=True
    )
    fast_copy, fast_insert = _run_on_server(stack, copy_rows // 5, insert_rows // 2, durable=False)
    ratio = copy_rate / insert_rate
    return [
        Row(
            f"ledger ingest COPY vs row INSERTs (batches of {BATCH}, fsync on, best of {ROUNDS})",
            f"x{ratio:.1f} ({copy_rate:,.0f} vs {insert_rate:,.0f} rows/s)",
            (Check("ratio", ratio, TARGET_RATIO, "x", at_least=True),),
            data={
                "copy_rows_per_s": copy_rate,
                "insert_rows_per_s": insert_rate,
                "ratio": ratio,
                "copy_rows": copy_rows,
                "insert_rows": insert_rows,
                "durable": True,
            },
        ),
        Row(
            "  same work per row (insert if new + roll-up upserts)",
            f"x{copy_rate / same_rate:.1f} ({same_rate:,.0f} rows/s per row)",
            data={"same_work_rows_per_s": same_rate, "ratio": copy_rate / same_rate},
        ),
        Row(
            "  COPY step alone (staging table, no indexes) vs row INSERTs",
            f"x{copy_only / insert_rate:.1f} ({copy_only:,.0f} rows/s)",
            data={"copy_only_rows_per_s": copy_only, "ratio": copy_only / insert_rate},
        ),
        Row(
            f"  batches of {SMALL_BATCH} instead of {BATCH} vs row INSERTs",
            f"x{small_rate / insert_rate:.1f} ({small_rate:,.0f} rows/s)",
            data={"batch": SMALL_BATCH, "copy_rows_per_s": small_rate},
        ),
        Row(
            "  same, fsync and synchronous_commit off (test settings)",
            f"x{fast_copy / fast_insert:.1f} ({fast_copy:,.0f} vs {fast_insert:,.0f} rows/s)",
            data={
                "copy_rows_per_s": fast_copy,
                "insert_rows_per_s": fast_insert,
                "ratio": fast_copy / fast_insert,
            },
        ),
    ]


def ledger_ingest(bench: Bench) -> list[Row]:
    return measure_ingest(bench.stack, bench.scale)


def main(argv: Sequence[str] | None = None) -> int:
    note = "PostgreSQL with production durability; see bench/ledger.py"
    return run_standalone("python -m bench.ledger", __doc__, measure_ingest, note, argv)


if __name__ == "__main__":
    sys.exit(main())
