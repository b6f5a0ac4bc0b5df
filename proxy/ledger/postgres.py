"""The PostgreSQL ledger sink: COPY into a per-connection staging table, then one statement
inserts the new ids and upserts the hourly roll-up from exactly the rows it inserted, in the
same transaction, so replaying a batch never double-counts (docs/design.md §5, §9)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import msgspec

from proxy.ledger.migrate import migrate_postgres
from proxy.ledger.records import COLUMNS, BudgetOverride, LedgerRecord, as_row, packed_batch, unpack

log = logging.getLogger("sidecache.ledger")
STAGE = "sidecache_ai_requests_stage"
_COLS = ", ".join(COLUMNS)

# Created once per pooled connection (asyncpg's reset on release keeps temp tables).
_STAGE_DDL = f"""
CREATE TEMP TABLE IF NOT EXISTS {STAGE} (
    id uuid, tenant text, user_id text, persona jsonb, request_type text, model text,
    prompt_tokens integer, completion_tokens integer, cached_tokens integer,
    cost double precision, saved_cost double precision, response_time_ms double precision,
    upstream_ms double precision, cache_hit boolean, cache_status text, status integer,
    created_at timestamptz, cache_match text, similarity double precision,
    cache_write_tokens integer, reasoning_tokens integer, service_tier text,
    request_digest text, answer_digest text, upstream text, served_model text
) ON COMMIT DELETE ROWS"""

# What every roll-up row sums, and how, from the rows of one flush.
_SUMS = ("requests", "hits", "errors", "prompt_tokens", "completion_tokens", "cached_tokens",
         "cache_write_tokens", "reasoning_tokens", "cost", "saved_cost",
         "response_ms_sum")  # fmt: skip
_AGGREGATES = """count(*), count(*) FILTER (WHERE cache_hit), count(*) FILTER (WHERE status >= 400),
           sum(prompt_tokens), sum(completion_tokens), sum(cached_tokens),
           sum(cache_write_tokens), sum(reasoning_tokens),
           sum(cost), sum(saved_cost), sum(response_time_ms)"""
_HOUR = "date_trunc('hour', created_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'"


def _roll_up(table: str, keys: dict[str, str]) -> str:
    """Upserts `table`'s rows (keyed by `keys`: column -> expression) from `inserted`."""
    added = ",\n        ".join(f"{c} = r.{c} + EXCLUDED.{c}" for c in _SUMS)
    return f"""
    INSERT INTO {table} AS r ({", ".join(keys)}, {", ".join(_SUMS)})
    SELECT {", ".join(keys.values())}, {_AGGREGATES}
    FROM inserted
    GROUP BY {", ".join(str(n) for n in range(1, len(keys) + 1))}
    ON CONFLICT ({", ".join(keys)}) DO UPDATE SET
        {added}"""


# `{conflict}`: empty on the first try (a plain insert is about a quarter cheaper), or
# `ON CONFLICT (id) DO NOTHING` when the first try met an id the table already has (a replay).
# Both roll-ups: per user (users, budgets) and per tenant (totals and costs over long windows,
# which would otherwise add up every user's rows).
_INSERT_TEMPLATE = f"""
WITH inserted AS (
    INSERT INTO ai_requests ({_COLS})
    SELECT {_COLS} FROM {STAGE}
    {{conflict}}
    RETURNING created_at, tenant, user_id, model, request_type, cache_hit, status,
              prompt_tokens, completion_tokens, cached_tokens, cache_write_tokens,
              reasoning_tokens, cost, saved_cost, response_time_ms
), by_user AS ({
    _roll_up(
        "ai_usage_hourly",
        {
            "hour": _HOUR,
            "tenant": "tenant",
            "user_id": "coalesce(user_id, '')",
            "model": "model",
            "request_type": "request_type",
        },
    )
}
), by_tenant AS ({
    _roll_up(
        "ai_usage_tenant_hourly",
        {"hour": _HOUR, "tenant": "tenant", "model": "model", "request_type": "request_type"},
    )
}
)
SELECT count(*) FROM inserted"""
_INSERT_NEW = _INSERT_TEMPLATE.replace("{conflict}", "")
_INSERT = _INSERT_TEMPLATE.replace("{conflict}", "ON CONFLICT (id) DO NOTHING")

# The connection went away or never came: the batch is journaled and retried.
_UNAVAILABLE = (OSError, TimeoutError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError)
_json_encode = msgspec.json.Encoder().encode
_json_decode = msgspec.json.Decoder().decode


async def init_connection(conn: Any) -> None:
    """jsonb as a binary codec (a text codec breaks copy_records_to_table, docs/design.md §9),
    and the staging table."""
    await conn.set_type_codec(
        "jsonb",
        schema="pg_catalog",
        format="binary",
        encoder=lambda value: b"\x01" + _json_encode(value),
        decoder=lambda data: _json_decode(data[1:]),
    )
    await conn.execute(_STAGE_DDL)


def describe_dsn(dsn: str) -> str:
    """`postgres://host:port/db` without user or password, for logs."""
    parts = urlsplit(dsn)
    host = parts.hostname or "localhost"
    port = f":{parts.port}" if parts.port else ""
    return f"postgres://{host}{port}{parts.path}"


class PostgresSink:
    def __init__(
        self,
        dsn: str,
        *,
        migrate: bool = True,
        connect_timeout_s: float = 5.0,
        command_timeout_s: float = 60.0,
        pool_max_size: int = 4,
    ) -> None:
        self._dsn = dsn
        self._migrate = migrate
        self._migrated = False
        self._connect_timeout_s = connect_timeout_s
        self._command_timeout_s = command_timeout_s
        self._pool_max_size = pool_max_size
        self._pool: asyncpg.Pool | None = None
        self._pool_lock = asyncio.Lock()

    @property
    def name(self) -> str:
        return "postgres"

    @property
    def description(self) -> str:
        return describe_dsn(self._dsn)

    async def pool(self) -> asyncpg.Pool:
        """The pool, made on first use; min_size=0, so it connects only when asked
        (a pool with min_size>0 raises at start-up while Postgres is down, docs/design.md §9)."""
        async with self._pool_lock:
            if self._pool is None:
                self._pool = await asyncpg.create_pool(
                    self._dsn,
                    min_size=0,
                    max_size=self._pool_max_size,
                    init=init_connection,
                    timeout=self._connect_timeout_s,
                    command_timeout=self._command_timeout_s,
                    # JIT off: the ledger's statements are small writes and bounded admin
                    # reads, whose compile time JIT does not win back; the report's reads of a
                    # week of a 10M-row ledger spent 1-3 s of their time compiling
                    # (bench/report_time.py).
                    server_settings={"application_name": "sidecache-ledger", "jit": "off"},
                )
            return self._pool

    async def migrate(self) -> list[int]:
        pool = await self.pool()
        async with pool.acquire() as conn:
            applied = await migrate_postgres(conn)
        self._migrated = True
        return applied

    async def _ready(self) -> asyncpg.Pool:
        if self._migrate and not self._migrated:
            await self.migrate()
        return await self.pool()

    async def write(self, packed: list[bytes]) -> int:
        if not packed:
            return 0
        pool = await self._ready()
        records = unpack(packed_batch(packed))
        try:
            return await self._write_rows(pool, records)
        except _UNAVAILABLE:
            # A pooled connection may have died with a restarted server: one fresh try.
            return await self._write_rows(pool, records)

    async def _write_rows(self, pool: asyncpg.Pool, records: list[LedgerRecord]) -> int:
        """One transaction; if an id is already there, it rolls back whole and the batch is
        written again skipping the ids the table has."""
        try:
            return await self._copy_and_insert(pool, records, _INSERT_NEW)
        except asyncpg.UniqueViolationError:
            return await self._copy_and_insert(pool, records, _INSERT)

    async def _copy_and_insert(
        self, pool: asyncpg.Pool, records: list[LedgerRecord], sql: str
    ) -> int:
        async with pool.acquire() as conn, conn.transaction():
            # Rows are made as COPY sends them, so the server parses one chunk while the next
            # is made: 5,000 rows' prep and COPY took ~13 ms instead of ~19 made all first.
            rows = map(as_row, records)
            await conn.copy_records_to_table(STAGE, records=rows, columns=COLUMNS)
            inserted: int = await conn.fetchval(sql)
            return inserted

    def is_poison(self, exc: BaseException) -> bool:
        # Classes 22 and 23 from the server, or a value asyncpg could not encode.
        if isinstance(exc, asyncpg.DataError | asyncpg.IntegrityConstraintViolationError):
            return True
        return isinstance(exc, ValueError | TypeError | UnicodeError | OverflowError)

    async def fetch_overrides(self) -> list[BudgetOverride]:
        pool = await self._ready()
        rows = await pool.fetch(  # the table as text: the book validates it (jsonb takes any JSON)
            "SELECT scope, subject, daily_usd, monthly_usd, updated_at,"
            " downgrade_to::text AS downgrade_to FROM budget_overrides"
        )
        return [BudgetOverride(**dict(row)) for row in rows]

    def timestamp_param(self, moment: datetime) -> datetime:
        return moment

    async def fetch(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        """A read query for the admin API (`$n` placeholders), on the pool."""
        pool = await self._ready()
        return [tuple(row) for row in await pool.fetch(sql, *params)]

    async def write_audit(
        self, admin_user: str, action: str, target: dict[str, Any], detail: dict[str, Any]
    ) -> None:
        pool = await self._ready()
        await pool.execute(
            "INSERT INTO admin_audit (admin_user, action, target, detail) VALUES ($1, $2, $3, $4)",
            admin_user,
            action,
            target,
            detail,
        )

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            try:
                await asyncio.wait_for(pool.close(), self._connect_timeout_s)
            except (TimeoutError, *_UNAVAILABLE):
                pool.terminate()
