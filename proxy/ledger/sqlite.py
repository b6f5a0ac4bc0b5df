"""The SQLite ledger sink: the embedded default when no DATABASE_URL is set.

Same tables and semantics as Postgres: only ids the table lacks are inserted, and exactly those
are added to the hourly roll-up, in one transaction (sqlite_sql.py has the statements). WAL
mode. Batches of records are written by a process of their own (sqlite_helper.py says why);
migrations, budget overrides, admin reads and the audit trail run on one dedicated worker thread
that owns a connection. Either way the event loop never blocks on disk.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any, TypeVar

import msgspec

from proxy.ledger.migrate import migrate_sqlite
from proxy.ledger.records import BudgetOverride
from proxy.ledger.sqlite_helper import WriterProcess
from proxy.ledger.sqlite_rows import sqlite_time
from proxy.ledger.sqlite_sql import connect_sqlite, is_refusal

T = TypeVar("T")
_json = msgspec.json.Encoder(order="sorted").encode


class SqliteSink:
    def __init__(self, path: str, *, migrate: bool = True) -> None:
        self.path = path
        self._migrate = migrate
        self._migrated = False
        self._conn: sqlite3.Connection | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sidecache-sqlite")
        self._writer = WriterProcess(path)  # batches of records; the thread does the rest

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

    async def write(self, packed: list[bytes]) -> int:
        if not packed:
            return 0
        if self._migrate and not self._migrated:
            await self.migrate()
        return await self._writer.write(packed)

    def is_poison(self, exc: BaseException) -> bool:
        return is_refusal(exc)

    async def fetch_overrides(self) -> list[BudgetOverride]:
        return await self._call(self._fetch_overrides_sync)

    def _fetch_overrides_sync(self) -> list[BudgetOverride]:
        if self._migrate and not self._migrated:
            self._migrate_sync()
        rows = self._connection().execute(
            "SELECT scope, subject, daily_usd, monthly_usd, updated_at, downgrade_to"
            " FROM budget_overrides"
        )
        return [
            BudgetOverride(
                scope=scope,
                subject=subject,
                daily_usd=daily,
                monthly_usd=monthly,
                updated_at=datetime.fromisoformat(updated),
                downgrade_to=None if table is None else str(table),
            )
            for scope, subject, daily, monthly, updated, table in rows
        ]

    def timestamp_param(self, moment: datetime) -> str:
        return sqlite_time(moment)

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

        await self._writer.close()
        await self._call(_close)
        self._executor.shutdown(wait=True)
