"""The bench's generated ledger (bench/costs.py) loads through the current migrations: its SQL
lists every ledger column, so a migration that adds one must be followed there (the 10M-row
`costs` and `report_time` rows would otherwise fail only in `make bench`)."""

from __future__ import annotations

import asyncio

import asyncpg

from bench.costs import _load_ledger


def test_the_generated_ledger_loads_every_row_through_the_current_migrations(
    postgres_dsn: str,
) -> None:
    async def load_and_count() -> int:
        await _load_ledger(postgres_dsn, 3000)
        conn = await asyncpg.connect(postgres_dsn)
        try:
            return int(await conn.fetchval("SELECT count(*) FROM ai_requests"))
        finally:
            await conn.close()

    assert asyncio.run(load_and_count()) == 3000
