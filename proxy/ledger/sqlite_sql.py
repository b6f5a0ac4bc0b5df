"""The SQLite ledger's statements: the connection, and the transaction that writes a batch.

A batch is inserted with a few multi-row INSERTs and added to the hourly roll-ups with one
upsert per group of rows (sqlite_rows.roll_ups): a handful of statements, each doing its rows'
work inside SQLite. When an id is already there (a replay, or twice in one batch), the batch is
written again, in the same transaction, through the connection's inbox: a TEMP view whose
INSTEAD OF trigger inserts only the rows whose id is new and adds each to the roll-ups.
"""

from __future__ import annotations

import sqlite3
import time
from contextlib import closing
from functools import cache
from itertools import chain, repeat
from pathlib import Path
from typing import Any

import msgspec

from proxy.ledger.records import COLUMNS, Row
from proxy.ledger.sqlite_rows import roll_ups

BUSY_TIMEOUT_S = 30.0
Statement = tuple[str, list[Any]]
_COLS = ", ".join(COLUMNS)
_ROW = f"({', '.join('?' for _ in COLUMNS)})"
_PADDING = (None,) * len(COLUMNS)  # an inbox row the trigger skips
_MOST_ROWS = 512
INBOX = "sidecache_ledger_inbox"

# Each roll-up: its key columns and the trigger's expression for each. The per-tenant one comes
# with migration 002. The hour is the timestamp text cut after the hour.
_HOUR = "substr(NEW.created_at, 1, 13) || ':00:00.000000Z'"
_KEYS = {
    "ai_usage_hourly": {
        "hour": _HOUR,
        "tenant": "NEW.tenant",
        "user_id": "coalesce(NEW.user_id, '')",
        "model": "NEW.model",
        "request_type": "NEW.request_type",
    },
    "ai_usage_tenant_hourly": {
        "hour": _HOUR,
        "tenant": "NEW.tenant",
        "model": "NEW.model",
        "request_type": "NEW.request_type",
    },
}
_SUMS = {  # in sqlite_rows.roll_ups' order
    "requests": "1",
    "hits": "NEW.cache_hit",
    "errors": "NEW.status >= 400",
    "prompt_tokens": "NEW.prompt_tokens",
    "completion_tokens": "NEW.completion_tokens",
    "cached_tokens": "NEW.cached_tokens",
    "cache_write_tokens": "NEW.cache_write_tokens",
    "reasoning_tokens": "NEW.reasoning_tokens",
    "cost": "NEW.cost",
    "saved_cost": "NEW.saved_cost",
    "response_ms_sum": "NEW.response_time_ms",
}


def _upsert(table: str, values: str) -> str:
    keys = _KEYS[table]
    added = ",\n        ".join(f"{c} = {c} + excluded.{c}" for c in _SUMS)
    return f"""
    INSERT INTO {table} ({", ".join((*keys, *_SUMS))}) VALUES ({values})
    ON CONFLICT ({", ".join(keys)}) DO UPDATE SET
        {added}"""


_UPSERTS = {
    table: _upsert(table, ", ".join("?" * (len(k) + len(_SUMS)))) for table, k in _KEYS.items()
}


class Inbox(msgspec.Struct, frozen=True):
    """What prepare() found: the roll-up tables of this database."""

    roll_ups: tuple[str, ...]


def prepare(conn: sqlite3.Connection) -> Inbox:
    """Creates the connection's inbox (TEMP: per connection, never in the file): a view with
    the columns of `ai_requests`, whose trigger skips padding rows (id NULL) and ids already
    there, inserts the rest and adds each to the roll-ups. A row the table refuses (NOT NULL,
    CHECK) fails the whole statement."""
    found = {
        name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
    }
    tables = tuple(table for table in _KEYS if table in found)
    new = ", ".join(f"NEW.{column}" for column in COLUMNS)
    upserts = "".join(
        _upsert(table, ", ".join((*_KEYS[table].values(), *_SUMS.values()))) + ";"
        for table in tables
    )
    conn.execute(f"DROP TRIGGER IF EXISTS temp.{INBOX}_insert")
    conn.execute(
        f"CREATE TEMP VIEW IF NOT EXISTS {INBOX} AS SELECT {_COLS} FROM ai_requests WHERE 0"
    )
    conn.execute(f"""
CREATE TEMP TRIGGER {INBOX}_insert INSTEAD OF INSERT ON {INBOX}
WHEN NEW.id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM ai_requests WHERE id = NEW.id)
BEGIN
    INSERT INTO ai_requests ({_COLS}) VALUES ({new});{upserts}
END""")
    return Inbox(tables)


@cache
def _most_rows() -> int:
    """Rows per INSERT: at most 512, within this SQLite's bound-variable limit (999 before
    3.32, 32766 since, often raised by distributions)."""
    with closing(sqlite3.connect(":memory:")) as conn:
        variables = conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
    return min(_MOST_ROWS, 1 << (variables // len(COLUMNS)).bit_length() - 1)


@cache
def _insert_sql(table: str, rows: int) -> str:
    return f"INSERT INTO {table} ({_COLS}) VALUES {', '.join([_ROW] * rows)}"


def insert_statements(rows: list[Row]) -> list[Statement]:
    """Plain INSERTs of `rows` into `ai_requests`, in power-of-two chunks (a few statement
    shapes, kept prepared in the connection's cache)."""
    statements: list[Statement] = []
    start, most = 0, _most_rows()
    while start < len(rows):
        size = min(most, 1 << (len(rows) - start).bit_length() - 1)
        chunk = rows[start : start + size]
        statements.append((_insert_sql("ai_requests", size), list(chain.from_iterable(chunk))))
        start += size
    return statements


def inbox_statements(rows: list[Row]) -> list[Statement]:
    """INSERTs of `rows` into the inbox: full chunks, and the rest padded to a power of two."""
    statements: list[Statement] = []
    most = _most_rows()
    for start in range(0, len(rows), most):
        chunk = rows[start : start + most]
        size = 1 << (len(chunk) - 1).bit_length()
        values = list(chain.from_iterable(chain(chunk, repeat(_PADDING, size - len(chunk)))))
        statements.append((_insert_sql(INBOX, size), values))
    return statements


def write_batch(conn: sqlite3.Connection, rows: list[Row], inbox: Inbox) -> int:
    """Writes `rows` (sqlite_rows.sqlite_row) in one transaction; returns how many were new."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute("SAVEPOINT plain")
        try:
            for sql, params in insert_statements(rows):
                conn.execute(sql, params)
        except sqlite3.IntegrityError:  # an id already there, or a row refused (again below)
            conn.execute("ROLLBACK TO plain")
            before = conn.total_changes
            for sql, params in inbox_statements(rows):
                conn.execute(sql, params)
            # Each row the trigger takes is one insert and one upsert per roll-up.
            inserted = (conn.total_changes - before) // (1 + len(inbox.roll_ups))
        else:
            by_user, by_tenant = roll_ups(rows)
            added = {"ai_usage_hourly": by_user, "ai_usage_tenant_hourly": by_tenant}
            for table in inbox.roll_ups:
                conn.executemany(_UPSERTS[table], added[table])
            inserted = len(rows)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return inserted


def is_refusal(exc: BaseException) -> bool:
    """True when SQLite refused the data (constraints, values that cannot be bound), False
    when it was unavailable (OperationalError: locked, disk full, I/O)."""
    retryable = isinstance(exc, sqlite3.OperationalError | OSError)
    refused = (sqlite3.IntegrityError, sqlite3.DataError, sqlite3.InterfaceError)
    return not retryable and isinstance(
        exc, (*refused, ValueError, TypeError, UnicodeError, OverflowError)
    )


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
