"""The SQLite ledger sink: the embedded default when no DATABASE_URL is set.

Same tables and semantics as Postgres: `ON CONFLICT (id) DO NOTHING` and the hourly roll-up
of exactly the rows inserted, in one `BEGIN IMMEDIATE` transaction. WAL mode. Every call runs on
one dedicated worker thread that owns the connection, so the event loop never blocks on disk.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from proxy.ledger.migrate import migrate_sqlite
from proxy.ledger.records import COLUMNS, BudgetOverride, LedgerRecord, as_row, as_utc, rollups

T = TypeVar("T")
BUSY_TIMEOUT_S = 30.0
_json = msgspec.json.Encoder(order="sorted").encode

# Not INSERT OR IGNORE: that would also skip rows breaking NOT NULL or CHECK, silently.
_INSERT = (
    f"INSERT INTO ai_requests ({', '.join(COLUMNS)}) "
    f"VALUES ({', '.join('?' for _ in COLUMNS)}) ON CONFLICT (id) DO NOTHING"
)
_ROLLUP = """
INSERT INTO ai_usage_hourly (
    hour, tenant, user_id, model, request_type, requests, hits, errors,
    prompt_tokens, completion_tokens, cached_tokens, cost, saved_cost, response_ms_sum
) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (hour, tenant, user_id, model, request_type) DO UPDATE SET
    requests = requests + excluded.requests,
    hits = hits + excluded.hits,
    errors = errors + excluded.errors,
    prompt_tokens = prompt_tokens + excluded.prompt_tokens,
    completion_tokens = completion_tokens + excluded.completion_tokens,
    cached_tokens = cached_tokens + excluded.cached_tokens,
    cost = cost + excluded.cost,
    saved_cost = saved_cost + excluded.saved_cost,
    response_ms_sum = response_ms_sum + excluded.response_ms_sum"""
_UPSERT_OVERRIDE = """
INSERT INTO budget_overrides (scope, subject, daily_usd, monthly_usd, updated_at)
VALUES (?, ?, ?, ?, ?)
ON CONFLICT (scope, subject) DO UPDATE SET
    daily_usd = excluded.daily_usd,
    monthly_usd = excluded.monthly_usd,
    updated_at = excluded.updated_at"""


def sqlite_time(moment: datetime) -> str:
    """UTC as fixed-width ISO 8601 text: sorts in time order, and SQLite's date functions
    read it."""
    return as_utc(moment).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def sqlite_row(rec: LedgerRecord) -> tuple[Any, ...]:
    row = list(as_row(rec))
    row[3] = _json(row[3]).decode()  # persona
    row[13] = int(row[13])  # cache_hit
    row[16] = sqlite_time(row[16])  # created_at
    return tuple(row)


def connect_sqlite(path: str) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit), WAL journal."""
    if path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(
        path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
    )
    # Switching a new file to WAL can fail with "database is locked" at once, without the busy
    # handler, while another process opens it too (two replicas starting): retry it here.
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            break
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                conn.close()
                raise
            time.sleep(0.02)
    conn.execute("PRAGMA synchronous=NORMAL")
    return conn


class SqliteSink:
    def __init__(self, path: str, *, migrate: bool = True) -> None:
        self.path = path
        self._migrate = migrate
        self._migrated = False
        self._conn: sqlite3.Connection | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sidecache-sqlite")

    @property
    def name(self) -> str:
        return "sqlite"

    @property
    def description(self) -> str:
        return f"sqlite:{self.path}"

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = connect_sqlite(self.path)
        return self._conn

    async def migrate(self) -> list[int]:
        return await self._call(self._migrate_sync)

    def _migrate_sync(self) -> list[int]:
        applied = migrate_sqlite(self._connection())
        self._migrated = True
        return applied

    async def write(self, records: list[LedgerRecord]) -> int:
        if not records:
            return 0
        return await self._call(self._write_sync, records)

    def _write_sync(self, records: list[LedgerRecord]) -> int:
        if self._migrate and not self._migrated:
            self._migrate_sync()
        conn = self._connection()
        rows = [sqlite_row(rec) for rec in records]
        conn.execute("BEGIN IMMEDIATE")
        try:
            inserted = [
                rec for rec, row in zip(records, rows, strict=True)
                if conn.execute(_INSERT, row).rowcount == 1
            ]  # fmt: skip
            conn.executemany(
                _ROLLUP,
                [
                    (
                        sqlite_time(key.hour), key.tenant, key.user_id, key.model,
                        key.request_type, t.requests, t.hits, t.errors, t.prompt_tokens,
                        t.completion_tokens, t.cached_tokens, t.cost, t.saved_cost,
                        t.response_ms_sum,
                    )
                    for key, t in rollups(inserted).items()
                ],
            )  # fmt: skip
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return len(inserted)

    def is_poison(self, exc: BaseException) -> bool:
        # Refused values (constraints, types that cannot be bound); OperationalError (locked,
        # disk full, I/O) is unavailability.
        retryable = isinstance(exc, sqlite3.OperationalError | OSError)
        poison = (sqlite3.IntegrityError, sqlite3.DataError, sqlite3.InterfaceError)
        return not retryable and isinstance(
            exc, (*poison, ValueError, TypeError, UnicodeError, OverflowError)
        )

    async def fetch_overrides(self) -> list[BudgetOverride]:
        return await self._call(self._fetch_overrides_sync)

    def _fetch_overrides_sync(self) -> list[BudgetOverride]:
        if self._migrate and not self._migrated:
            self._migrate_sync()
        rows = self._connection().execute(
            "SELECT scope, subject, daily_usd, monthly_usd, updated_at FROM budget_overrides"
        )
        return [
            BudgetOverride(
                scope=scope,
                subject=subject,
                daily_usd=daily,
                monthly_usd=monthly,
                updated_at=datetime.fromisoformat(updated),
            )
            for scope, subject, daily, monthly, updated in rows
        ]

    async def save_override(self, override: BudgetOverride) -> None:
        await self._call(self._save_override_sync, override)

    def _save_override_sync(self, override: BudgetOverride) -> None:
        if self._migrate and not self._migrated:
            self._migrate_sync()
        self._connection().execute(
            _UPSERT_OVERRIDE,
            (
                override.scope,
                override.subject,
                override.daily_usd,
                override.monthly_usd,
                sqlite_time(override.updated_at),
            ),
        )

    async def fetch(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        """A read query for the admin API (`?` placeholders), on the sink's thread."""
        return await self._call(self._fetch_sync, sql, params)

    def _fetch_sync(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        if self._migrate and not self._migrated:
            self._migrate_sync()
        return [tuple(row) for row in self._connection().execute(sql, tuple(params))]

    async def write_audit(
        self, admin_user: str, action: str, target: dict[str, Any], detail: dict[str, Any]
    ) -> None:
        await self._call(
            self._fetch_sync,
            "INSERT INTO admin_audit (admin_user, action, target, detail) VALUES (?, ?, ?, ?)",
            (admin_user, action, _json(target).decode(), _json(detail).decode()),
        )

    async def close(self) -> None:
        def _close() -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        await self._call(_close)
        self._executor.shutdown(wait=True)
