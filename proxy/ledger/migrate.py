"""Versioned SQL migrations: `migrations/<dialect>/NNN_name.sql`, shipped inside the package.

Each database records what it has applied in `schema_migrations`. Two replicas starting at
once are serialised: on PostgreSQL by a session advisory lock held while migrating, on SQLite by
one `BEGIN IMMEDIATE` transaction around the check and the changes. The SQL files are written
to be re-runnable as well (`IF NOT EXISTS`).
"""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass
from importlib import resources
from typing import Any, Literal

Dialect = Literal["postgres", "sqlite"]
# An arbitrary constant: the key of the advisory lock every replica takes to migrate.
ADVISORY_LOCK_KEY = 0x51DECAC4E
_FILE = re.compile(r"^(\d{3})_([a-z0-9_]+)\.sql$")

_PG_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)"""
_SQLITE_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    INTEGER PRIMARY KEY,
    name       TEXT NOT NULL,
    applied_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
)"""


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


def load_migrations(dialect: Dialect) -> list[Migration]:
    folder = resources.files("proxy.ledger") / "migrations" / dialect
    found: list[Migration] = []
    for entry in folder.iterdir():
        match = _FILE.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text("utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"duplicate migration versions in {dialect}: {versions}")
    return found


async def migrate_postgres(conn: Any) -> list[int]:
    """Applies pending migrations on an asyncpg connection; returns the versions applied."""
    await conn.execute("SELECT pg_advisory_lock($1)", ADVISORY_LOCK_KEY)
    try:
        await conn.execute(_PG_TABLE)
        rows = await conn.fetch("SELECT version FROM schema_migrations")
        done = {row[0] for row in rows}
        applied: list[int] = []
        for migration in load_migrations("postgres"):
            if migration.version in done:
                continue
            async with conn.transaction():
                await conn.execute(migration.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                    migration.version,
                    migration.name,
                )
            applied.append(migration.version)
        return applied
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", ADVISORY_LOCK_KEY)


def migrate_sqlite(conn: sqlite3.Connection) -> list[int]:
    """Applies pending migrations on a connection in autocommit mode (isolation_level=None)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(_SQLITE_TABLE)
        done = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
        applied: list[int] = []
        for migration in load_migrations("sqlite"):
            if migration.version in done:
                continue
            for statement in split_sqlite(migration.sql):
                conn.execute(statement)
            conn.execute(
                "INSERT INTO schema_migrations (version, name) VALUES (?, ?)",
                (migration.version, migration.name),
            )
            applied.append(migration.version)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return applied


def split_sqlite(script: str) -> list[str]:
    """The statements of a script, cut where SQLite itself sees a complete statement
    (`executescript` would commit the enclosing transaction, so it cannot be used here)."""
    statements: list[str] = []
    buffer = ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            statement = _strip_comments(buffer)
            if statement:
                statements.append(statement)
            buffer = ""
    if _strip_comments(buffer):
        raise ValueError(f"incomplete SQL statement at the end of a migration: {buffer!r}")
    return statements


def _strip_comments(sql: str) -> str:
    lines = [line for line in sql.splitlines() if not line.lstrip().startswith("--")]
    return "\n".join(lines).strip()
