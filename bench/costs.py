"""Issue 5: the admin `costs` answer for a 30-day window over a 10M-row ledger, read from the
hourly roll-up (what the admin API runs) against the same answer computed from raw rows.

The roll-up side is the very call `admin.dashboard.Dashboard.costs` makes: `admin.sql.costs`'s
text run through `admin.queries.QueryRunner` on a `PostgresSink`, from the top of the hour 30
days ago, with the dashboard page's parameters for 30 days (bucket=day, group_by=model). The
raw side (`_RAW`, written here) groups `ai_requests` by the same buckets and groups; both run
through the same runner, and the bench fails unless their answers agree (counts exactly, sums to
1e-9). Each is run once untimed (caches warm), then `RUNS` times; the medians are reported.

The ledger: a private PostgreSQL (the test fixture: fsync off, data directory on /dev/shm when it
has room, so the raw scan reads memory, never a disk), the project's migrations, then `ROWS`
rows over the last `DAYS` days in arrival order (sequential ids, as the writer's are), generated
server-side by `_GENERATE` into the writer's staging table and moved by the writer's own flush
statement (insert + roll-up upsert), `CHUNK` rows per transaction, then VACUUM ANALYZE (what
autovacuum would have done). Mix: `TENANTS` tenants, `USERS` users plus about 5 % of requests
without one, the `KINDS` below; 40 % HIT, 3 % COALESCED, 2 % BYPASS, the rest MISS with 1 % of
misses failing (429/502, no tokens, no cost); costs from config/pricing.toml. Costs by model
read the per-tenant roll-up (a few rows per tenant and hour, whatever the number of users); the
row says how many rows of it the window holds.
Standalone: `python -m bench.costs [--quick]` (1M rows instead of 10M). The full run's data
directory takes about 5 GB (memory, when it is on /dev/shm).
"""

from __future__ import annotations

import asyncio
import itertools
import math
import statistics
import sys
import time
from collections.abc import Sequence
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import msgspec

from admin import sql
from admin.models import GROUP_COLUMNS, WINDOWS
from admin.queries import QueryRunner
from proxy.failures import StoreUnavailable
from proxy.ledger.postgres import _INSERT_NEW as FLUSH_SQL
from proxy.ledger.postgres import STAGE, PostgresSink, init_connection
from proxy.ledger.pricing import PriceTable, default_pricing_path, read_price_file
from proxy.ledger.records import COLUMNS
from tests.fixtures.postgres_server import PostgresServer

from .procs import HarnessError
from .report import Check, Row, run_standalone
from .stack import Bench

TARGET_MS = 50.0
ROWS, QUICK_ROWS = 10_000_000, 1_000_000
DAYS, CHUNK, RUNS = 35, 500_000, 5
TENANTS, USERS = 4, 100
WINDOW, BUCKET, GROUP_BY = "30d", "day", "model"  # the dashboard page's 30-day costs call


class Kind(msgspec.Struct, frozen=True):
    """One (request type, model) of the mix: its share and its token ranges."""

    request_type: str
    model: str
    share: float
    prompt: tuple[int, int]
    completion: tuple[int, int]


KINDS = (
    Kind("chat.completions", "gpt-4o-mini", 0.55, (200, 2000), (50, 600)),
    Kind("chat.completions", "gpt-4o", 0.15, (200, 2000), (50, 600)),
    Kind("completions", "gpt-3.5-turbo-instruct", 0.05, (100, 800), (20, 300)),
    Kind("embeddings", "text-embedding-3-small", 0.20, (10, 500), (0, 0)),
    Kind("moderations", "omni-moderation-latest", 0.05, (20, 400), (0, 0)),
)
_KINDS_DDL = """
CREATE TEMP TABLE bench_kinds (
    k int PRIMARY KEY, request_type text, model text, input_usd float8,
    output_usd float8, p_min int, p_span int, c_min int, c_span int
)"""
# $1..$2: row numbers; $3: the first row's time; $4: seconds between rows; $5 users; $6 tenants;
# $7: the kinds' lower bounds in [0, 1), in k order (width_bucket picks a kind by its share).
# The columns of migrations 003 to 006: no semantic hits or token kinds; a miss's digests repeat
# every 100,000 rows (the report's repeated misses and persona advice read them); no upstream
# or served model recorded (one upstream).
_GENERATE = f"""
INSERT INTO {STAGE} ({", ".join(COLUMNS)})
SELECT ('00000000-0000-4000-8000-' || lpad(to_hex(i), 12, '0'))::uuid,
       'tenant-' || (u % $6::int), CASE WHEN u < $5::int THEN 'user-' || u END,
       CASE u % 3 WHEN 0 THEN '{{}}'::jsonb
            ELSE jsonb_build_object('experience', (ARRAY['beginner', 'advanced'])[1 + u % 2])
       END,
       request_type, model,
       CASE WHEN ok THEN p ELSE 0 END, CASE WHEN ok THEN c ELSE 0 END, 0,
       CASE WHEN ok AND NOT saved THEN price ELSE 0 END, CASE WHEN saved THEN price ELSE 0 END,
       CASE WHEN s = 'HIT' THEN 0.4 + 3 * r ELSE 151.5 + 2500 * r END,
       CASE WHEN s = 'HIT' THEN NULL ELSE 150 + 2500 * r END,
       s = 'HIT', s, CASE WHEN ok THEN 200 WHEN e < 0.004 THEN 429 ELSE 502 END,
       $3::timestamptz + make_interval(secs => i * $4::float8),
       NULL, NULL, 0, 0, NULL,
       CASE WHEN s = 'MISS' AND ok THEN 'q' || (i % 100000) END,
       CASE WHEN s = 'MISS' AND ok THEN 'a' || (i % 100000) END,
       NULL, NULL
FROM (
    SELECT *, s IN ('HIT', 'COALESCED') AS saved, s <> 'MISS' OR e >= 0.01 AS ok,
           (p * input_usd + c * output_usd) / 1e6 AS price
    FROM (
        SELECT g.i, g.u, g.e, g.r, kind.request_type, kind.model, kind.input_usd,
               kind.output_usd, kind.p_min + floor(g.r * kind.p_span)::int AS p,
               kind.c_min + floor(g.r * kind.c_span)::int AS c,
               CASE WHEN g.h < 0.40 THEN 'HIT' WHEN g.h < 0.43 THEN 'COALESCED'
                    WHEN g.h < 0.45 THEN 'BYPASS' ELSE 'MISS' END AS s
        FROM (
            SELECT i, floor(random() * $5::int * 1.05)::int AS u, random() AS pick,
                   random() AS h, random() AS e, random() AS r
            FROM generate_series($1::bigint, $2::bigint) AS i
        ) g
        JOIN bench_kinds kind ON kind.k = width_bucket(g.pick, $7::float8[])
    ) t
) x"""
# The raw-rows answer to admin.sql.costs: the same buckets (UTC, as text), groups and sums.
_RAW = """
SELECT to_char(b, 'YYYY-MM-DD"T"HH24":00:00Z"'), grp, n, cost, saved, p, c, ca, cw, re
FROM (
    SELECT date_trunc('{bucket}', created_at AT TIME ZONE 'UTC') AS b,
           coalesce({column}, '') AS grp, count(*) AS n, sum(cost) AS cost,
           sum(saved_cost) AS saved, sum(prompt_tokens) AS p, sum(completion_tokens) AS c,
           sum(cached_tokens) AS ca, sum(cache_write_tokens) AS cw,
           sum(reasoning_tokens) AS re
    FROM ai_requests WHERE created_at >= ?
    GROUP BY 1, 2
) r ORDER BY 1, 2"""


class Timed(msgspec.Struct):
    median_ms: float
    runs_ms: list[float]
    answer: list[tuple[Any, ...]]


class Found(msgspec.Struct):
    load_s: float
    rollup: Timed
    raw: Timed
    rollup_rows: int  # roll-up rows in the window
    raw_rows: int  # ai_requests rows in the window


def _kind_rows() -> list[tuple[Any, ...]]:
    prices = PriceTable(read_price_file(default_pricing_path()))
    rows = []
    for k, kind in enumerate(KINDS, start=1):
        price = prices.price_for(kind.model)
        if price is None:
            raise HarnessError(f"config/pricing.toml has no price for {kind.model}")
        p_min, p_max = kind.prompt
        c_min, c_max = kind.completion
        rows.append((k, kind.request_type, kind.model, price.input, price.output,
                     p_min, p_max - p_min, c_min, c_max - c_min))  # fmt: skip
    return rows


async def _load(sink: PostgresSink, dsn: str, rows: int) -> float:
    """Migrations, then `rows` generated rows and their roll-up; returns the seconds it took."""
    started = time.perf_counter()
    await sink.migrate()
    conn: Any = await asyncpg.connect(dsn)
    try:
        await init_connection(conn)  # the writer's staging table
        await conn.execute(_KINDS_DDL)
        await conn.executemany(
            "INSERT INTO bench_kinds VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            _kind_rows(),
        )
        await conn.execute("ANALYZE bench_kinds")
        step = DAYS * 86400 / rows
        lows = list(itertools.accumulate((kind.share for kind in KINDS[:-1]), initial=0.0))
        first = datetime.now(UTC) - timedelta(days=DAYS)
        stored = 0
        for low in range(0, rows, CHUNK):
            high = min(low + CHUNK, rows) - 1
            async with conn.transaction():
                await conn.execute(_GENERATE, low, high, first, step, USERS, TENANTS, lows)
                stored += await conn.fetchval(FLUSH_SQL)
        if stored != rows:
            raise HarnessError(f"the writer's flush stored {stored} rows, not {rows}")
        await conn.execute("VACUUM ANALYZE ai_requests")
        await conn.execute("VACUUM ANALYZE ai_usage_hourly")
        await conn.execute("VACUUM ANALYZE ai_usage_tenant_hourly")
    finally:
        await conn.close()
    return time.perf_counter() - started


class LoadedLedger(msgspec.Struct, frozen=True):
    """A private PostgreSQL holding `rows` generated rows (and their roll-ups)."""

    dsn: str
    rows: int
    load_s: float


async def _load_ledger(dsn: str, rows: int) -> float:
    sink = PostgresSink(dsn, command_timeout_s=600.0)
    try:
        return await _load(sink, dsn, rows)
    finally:
        await sink.close()


def loaded_ledger(
    stack: ExitStack, rows: int, shared: dict[int, LoadedLedger] | None = None
) -> LoadedLedger:
    """A loaded ledger of `rows` rows whose server lives as long as `stack`. With `shared` (the
    run's Bench.ledgers), the one an earlier row loaded is read again: loading 10M rows takes
    minutes, and the rows that read it (this one, report_time) only read it."""
    if shared is not None and rows in shared:
        return shared[rows]
    try:
        server = stack.enter_context(PostgresServer())
    except (RuntimeError, OSError, KeyError) as err:
        raise HarnessError(f"cannot start a private PostgreSQL: {err}") from err
    try:
        load_s = asyncio.run(_load_ledger(server.dsn, rows))
    except (asyncpg.PostgresError, OSError) as err:
        raise HarnessError(f"loading the {rows:,}-row ledger failed: {err!r}") from err
    ledger = LoadedLedger(server.dsn, rows, load_s)
    if shared is not None:
        shared[rows] = ledger
    return ledger


async def _timed(runner: QueryRunner, name: str, text: str, since: Any) -> Timed:
    answer = await runner.run(name, text, [since])  # warm-up: not timed
    runs = []
    for _ in range(RUNS):
        started = time.perf_counter()
        again = await runner.run(name, text, [since])
        runs.append((time.perf_counter() - started) * 1000)
        _check_same(answer, again, f"{name} twice")
    return Timed(statistics.median(runs), runs, answer)


def _check_same(first: list[tuple[Any, ...]], second: list[tuple[Any, ...]], what: str) -> None:
    """Same points, same counts, sums equal to 1e-9 (parallel plans add in any order)."""
    if not first:
        raise HarnessError(f"{what}: no rows for the window")
    if len(first) != len(second):
        raise HarnessError(f"{what}: {len(first)} points vs {len(second)}")
    for ours, theirs in zip(first, second, strict=True):
        same = ours[:2] == theirs[:2] and int(ours[2]) == int(theirs[2])
        same = same and all(
            math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-9)
            for a, b in zip(ours[3:], theirs[3:], strict=True)
        )
        if not same:
            raise HarnessError(f"{what}: the answers disagree: {ours} vs {theirs}")


async def _measure(ledger: LoadedLedger) -> Found:
    sink = PostgresSink(ledger.dsn, command_timeout_s=600.0)
    try:
        runner = QueryRunner(sink)
        # Dashboard.since_hour: the top of the hour `window` ago.
        start = datetime.now(UTC) - WINDOWS[WINDOW]
        since = runner.at(start.replace(minute=0, second=0, microsecond=0))
        column = GROUP_COLUMNS[GROUP_BY]
        rollup = await _timed(runner, f"costs.{BUCKET}.{GROUP_BY}",
                              sql.costs(runner.dialect, BUCKET, column), since)  # fmt: skip
        raw = await _timed(runner, "costs.raw", _RAW.format(bucket=BUCKET, column=column), since)
        _check_same(rollup.answer, raw.answer, "roll-up vs raw rows")
        counted = await sink.fetch(
            f"SELECT (SELECT count(*) FROM {sql.roll_up_for(column)} WHERE hour >= $1),"
            " (SELECT count(*) FROM ai_requests WHERE created_at >= $1)",
            [since],
        )
    finally:
        await sink.close()
    return Found(ledger.load_s, rollup, raw, int(counted[0][0]), int(counted[0][1]))


def measure_costs(
    stack: ExitStack, scale: float, shared: dict[int, LoadedLedger] | None = None
) -> list[Row]:
    rows = ROWS if scale >= 1.0 else QUICK_ROWS
    ledger = loaded_ledger(stack, rows, shared)
    try:
        found = asyncio.run(_measure(ledger))
    except (asyncpg.PostgresError, OSError, StoreUnavailable) as err:  # QueryRunner's 503
        raise HarnessError(f"the costs ledger failed: {err!r}") from err
    rollup, raw = found.rollup, found.raw
    ratio = raw.median_ms / rollup.median_ms
    size = f"{rows // 1_000_000}M-row ledger" + (", --quick" if rows != ROWS else "")
    return [
        Row(
            f"admin costs {WINDOW} by {BUCKET}/{GROUP_BY} from roll-up ({size})",
            f"{rollup.median_ms:.2f} ms (median of {RUNS}; {found.rollup_rows:,} roll-up rows)",
            (Check("median", rollup.median_ms, TARGET_MS, "ms"),),
            data={
                "median_ms": rollup.median_ms,
                "runs_ms": rollup.runs_ms,
                "rollup_rows": found.rollup_rows,
                "points": len(rollup.answer),
                "ledger_rows": rows,
            },
        ),
        Row(
            "  same answer from raw ai_requests rows",
            f"{raw.median_ms:,.0f} ms (median of {RUNS}; {found.raw_rows:,} rows)",
            data={"median_ms": raw.median_ms, "runs_ms": raw.runs_ms, "raw_rows": found.raw_rows},
        ),
        Row(
            "  raw / roll-up",
            f"x{ratio:,.1f} (ledger + roll-up loaded in {found.load_s:.0f} s)",
            data={"ratio": ratio, "load_s": found.load_s},
        ),
    ]


def costs(bench: Bench) -> list[Row]:
    return measure_costs(bench.stack, bench.scale, bench.ledgers)


def main(argv: Sequence[str] | None = None) -> int:
    note = "PostgreSQL with fsync off (test settings); see bench/costs.py"
    return run_standalone("python -m bench.costs", __doc__, measure_costs, note, argv)


if __name__ == "__main__":
    sys.exit(main())
