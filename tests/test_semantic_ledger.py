"""The semantic cache's accounting and operator side (docs/design.md §10): the ledger's
cache_match and similarity columns (migration 003) on both sinks, the dashboard's semantic
figures read back from rows written through the real sink, and the feedback endpoint."""

from __future__ import annotations

import dataclasses
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import msgspec
import pytest
from aiohttp import web

from admin.app import create_admin_app
from proxy.ledger.journal import Journal
from proxy.ledger.migrate import load_migrations, split_sqlite
from proxy.ledger.records import COLUMNS, LedgerRecord, new_record_id, pack
from proxy.ledger.writer import LedgerWriter
from proxy.semantic.cache import SemanticCache
from proxy.vocabulary import CacheMatch, CacheStatus, Endpoint
from tests.admin_support import BASE, TOKENS, audit_rows, call, get
from tests.fixtures.sidecar import LoopThread, Sidecar, SidecarFactory, http_request
from tests.ledger_db import LedgerDb

BEFORE_003 = COLUMNS.index("cache_match")  # the columns of a ledger at migration 002
_PG_MIGRATIONS = """
CREATE TABLE schema_migrations (version integer PRIMARY KEY, name text NOT NULL,
                                applied_at timestamptz NOT NULL DEFAULT now())"""
_SQLITE_MIGRATIONS = """
CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL,
                                applied_at TEXT NOT NULL DEFAULT '')"""
_OLD_ROW = """
INSERT INTO ai_requests (id, tenant, persona, request_type, model, cache_hit, cache_status,
                         status, created_at)
VALUES ('00000000-0000-0000-0000-000000000001', 't-old', '{{}}', 'chat.completions', 'm', {hit},
        'HIT', 200, '2026-11-24T09:00:00.000000Z')"""


@pytest.fixture(params=["postgres", "sqlite"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> LedgerDb:
    if request.param == "postgres":
        return LedgerDb("postgres", request.getfixturevalue("postgres_dsn"))
    return LedgerDb("sqlite", str(tmp_path / "ledger.db"))


async def at_002(db: LedgerDb) -> None:
    """The database as a sidecar before migration 003 left it, with one hit of that time."""
    dialect = "postgres" if db.kind == "postgres" else "sqlite"
    first = [m for m in load_migrations(dialect) if m.version <= 2]
    assert [m.version for m in first] == [1, 2]
    if db.kind == "postgres":
        conn = await asyncpg.connect(db.target)
        try:
            await conn.execute(_PG_MIGRATIONS)
            for m in first:
                await conn.execute(m.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations VALUES ($1, $2)", m.version, m.name
                )
            await conn.execute(_OLD_ROW.format(hit="true"))
        finally:
            await conn.close()
        return
    with sqlite3.connect(db.target) as conn:
        conn.execute(_SQLITE_MIGRATIONS)
        for m in first:
            for statement in split_sqlite(m.sql):
                conn.execute(statement)
            conn.execute("INSERT INTO schema_migrations VALUES (?, ?, '')", (m.version, m.name))
        conn.execute(_OLD_ROW.format(hit="1"))


def record(
    match: CacheMatch | None, similarity: float | None, *, saved: float = 0.0, hit: bool = True
) -> LedgerRecord:
    return LedgerRecord(
        new_record_id(), "t-alpha", "u1", {}, Endpoint.CHAT, "gpt-4o-mini",
        prompt_tokens=10, completion_tokens=5, saved_cost=saved if hit else 0.0,
        cost=0.0 if hit else 0.001, cache_hit=hit,
        cache_status=CacheStatus.HIT if hit else CacheStatus.MISS,
        created_at=datetime.now(UTC), cache_match=match, similarity=similarity,
    )  # fmt: skip


async def test_migration_003_over_a_002_ledger_and_both_sinks_write_the_columns(
    db: LedgerDb,
) -> None:
    await at_002(db)
    sink = db.sink()
    assert await sink.migrate() == [3, 4, 5, 6, 7]
    written = [
        record(CacheMatch.SEMANTIC, 0.9312, saved=0.002),
        record(CacheMatch.EXACT, None, saved=0.001),
        record(None, None, hit=False),
    ]
    assert await sink.write([pack(r) for r in written]) == 3
    await sink.close()
    rows = await db.rows_by_id()
    assert len(rows) == 4
    found = {rec.id: (rows[rec.id]["cache_match"], rows[rec.id]["similarity"]) for rec in written}
    assert found == {
        written[0].id: ("semantic", pytest.approx(0.9312)),
        written[1].id: ("exact", None),
        written[2].id: (None, None),
    }
    old = rows["00000000-0000-0000-0000-000000000001"]
    assert (old["cache_match"], old["similarity"]) == (None, None)


async def test_the_replay_path_writes_the_columns_too(db: LedgerDb) -> None:
    """A batch written again (an id already there) goes through the replay statements: the
    PostgreSQL ON CONFLICT insert, SQLite's inbox trigger."""
    sink = db.sink()
    await sink.migrate()
    first, second = record(CacheMatch.EXACT, None), record(CacheMatch.SEMANTIC, 0.88)
    assert await sink.write([pack(first)]) == 1
    assert await sink.write([pack(first), pack(second)]) == 1
    await sink.close()
    row = (await db.rows_by_id())[second.id]
    assert (row["cache_match"], row["similarity"]) == ("semantic", pytest.approx(0.88))


async def test_a_journal_written_before_003_is_replayed(db: LedgerDb, tmp_path: Path) -> None:
    """Packed records of a sidecar without the new fields: arrays of the 002 columns."""
    path = tmp_path / "ledger.journal"
    records = [record(None, None) for _ in range(5)]
    old = [msgspec.msgpack.encode(msgspec.structs.astuple(r)[:BEFORE_003]) for r in records]
    journal = Journal(path)
    await journal.open()
    await journal.append(old)
    writer = LedgerWriter(db.sink(), Journal(path))
    await writer.start()
    await writer.flush()
    await writer.close()
    assert writer.stats.rejected == 0
    rows = await db.rows_by_id()
    assert sorted(rows) == sorted(r.id for r in records)
    assert {(row["cache_match"], row["similarity"]) for row in rows.values()} == {(None, None)}


@pytest.fixture(params=["postgres", "sqlite"])
def ledger_env(request: pytest.FixtureRequest) -> dict[str, str]:
    if request.param == "postgres":
        return {"DATABASE_URL": request.getfixturevalue("postgres_dsn")}
    return {}


def test_the_cache_view_shows_semantic_hits_savings_and_similarities(
    make_sidecar: SidecarFactory, loop_thread: LoopThread, ledger_env: dict[str, str]
) -> None:
    sidecar = make_sidecar(ADMIN_TOKENS=TOKENS, **ledger_env)
    similarities = (0.45, 0.5, 0.85, 0.9, 0.93, 0.949, 0.95, 1.0)
    rows = [record(CacheMatch.SEMANTIC, s, saved=0.01) for s in similarities]
    rows += [record(CacheMatch.EXACT, None, saved=0.1) for _ in range(3)]
    rows += [record(None, None, saved=0.1)]  # a hit of a sidecar that did not say: exact
    rows += [record(None, None, hit=False)]
    sink = sidecar.runtime.ledger.sink
    assert loop_thread.run(sink.write([pack(r) for r in rows])) == len(rows)
    body = get(sidecar, "cache?window=1h")
    semantic = body["semantic"]
    assert semantic["enabled"] is False
    assert semantic["hits"] == 8
    assert semantic["saved_usd"] == pytest.approx(0.08)
    assert semantic["exact_hits"] == 4
    assert semantic["exact_saved_usd"] == pytest.approx(0.4)
    assert body["saved_usd"] == pytest.approx(0.48)  # the total, as before
    buckets = {(b["lower"], b["upper"]): b["hits"] for b in semantic["similarity"]}
    assert len(buckets) == 11
    assert [b["lower"] for b in semantic["similarity"]] == sorted(buckets_lower(buckets))
    assert buckets[(0.0, 0.5)] == 1
    assert buckets[(0.5, 0.55)] == 1
    assert buckets[(0.85, 0.9)] == 1
    assert buckets[(0.9, 0.95)] == 3  # 0.9, 0.93 and 0.949
    assert buckets[(0.95, 1.0)] == 2  # 0.95 and 1.0
    assert sum(buckets.values()) == 8


def buckets_lower(buckets: dict[tuple[float, float], int]) -> list[float]:
    return [low for low, _ in buckets]


def test_an_empty_window_has_zero_semantic_figures(make_sidecar: SidecarFactory) -> None:
    semantic = get(make_sidecar(ADMIN_TOKENS=TOKENS), "cache")["semantic"]
    assert (semantic["hits"], semantic["saved_usd"], semantic["exact_hits"]) == (0, 0.0, 0)
    assert {b["hits"] for b in semantic["similarity"]} == {0}


# ---- feedback ------------------------------------------------------------------------------

FEEDBACK = f"{BASE}/cache/feedback"
KEY = "0123456789abcdef"


class RecordingSemanticCache(SemanticCache):
    """The seam the admin port calls, with what it was asked kept."""

    def __init__(self, indexed: set[str]) -> None:
        self.indexed = indexed
        self.marked: list[str] = []

    async def mark_wrong(self, short_id: str) -> bool:
        self.marked.append(short_id)
        return short_id in self.indexed


def test_feedback_while_the_semantic_cache_is_off_is_a_409(make_sidecar: SidecarFactory) -> None:
    sidecar = make_sidecar(ADMIN_TOKENS=TOKENS)
    answer = call(sidecar, FEEDBACK, method="POST", body={"key": KEY, "wrong": True})
    assert answer.status == 409
    error = answer.json()["error"]
    assert error["code"] == "semantic_cache_off"
    assert error["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"key": "0123456789abcdeg", "wrong": True}, "key"),  # not hex
        ({"key": "0123456789abcde", "wrong": True}, "key"),  # 15
        ({"key": "0123456789abcdef0", "wrong": True}, "key"),  # 17
        ({"key": KEY + "\n", "wrong": True}, "key"),
        ({"key": KEY * 3, "wrong": True}, "key"),  # 48: neither short nor whole
        ({"key": KEY, "wrong": False}, "wrong"),
        ({"key": KEY}, "wrong"),
        ({"wrong": True}, "key"),
    ],
)
def test_bad_feedback_is_a_400_naming_it(
    make_sidecar: SidecarFactory, body: dict[str, object], param: str
) -> None:
    sidecar = make_sidecar(ADMIN_TOKENS=TOKENS)
    answer = call(sidecar, FEEDBACK, method="POST", body=body)
    assert answer.status == 400, answer.body
    assert answer.json()["error"]["param"] == param


@pytest.fixture
def semantic_admin(
    make_sidecar: SidecarFactory, loop_thread: LoopThread
) -> Iterator[tuple[Sidecar, str, RecordingSemanticCache]]:
    """A sidecar, and an admin port on its runtime with a semantic cache (indexing KEY)."""
    sidecar = make_sidecar(ADMIN_TOKENS=TOKENS)
    semantic = RecordingSemanticCache({KEY})
    runtime = dataclasses.replace(sidecar.runtime, semantic=semantic)

    async def serve() -> web.AppRunner:
        runner = web.AppRunner(create_admin_app(runtime, sidecar.root), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        return runner

    runner = loop_thread.run(serve())
    yield sidecar, f"http://127.0.0.1:{runner.addresses[0][1]}", semantic
    loop_thread.run(runner.cleanup())


def test_feedback_marks_the_entry_wrong_and_is_audited(
    semantic_admin: tuple[Sidecar, str, RecordingSemanticCache], loop_thread: LoopThread
) -> None:
    sidecar, admin_url, semantic = semantic_admin
    headers = {"Authorization": f"Bearer {TOKENS.split(',')[1]}", "X-Admin-User": "ops-ann"}
    whole = KEY.upper() + "f" * 48  # a whole digest, in capitals: the same entry
    answer = http_request(admin_url, "POST", FEEDBACK, {"key": whole, "wrong": True}, headers)
    assert answer.status == 200, answer.body
    assert answer.json() == {"key": KEY, "wrong": True, "indexed_here": True, "audited": True}
    other = "fedcba9876543210"
    answer = http_request(admin_url, "POST", FEEDBACK, {"key": other, "wrong": True}, headers)
    assert answer.json()["indexed_here"] is False
    assert semantic.marked == [KEY, other]
    rows = [r for r in audit_rows(loop_thread, sidecar) if r["action"] == "cache.feedback"]
    assert [r["admin_user"] for r in rows] == ["ops-ann", "ops-ann"]
    targets = [r["target"] if isinstance(r["target"], dict) else msgspec.json.decode(r["target"])
               for r in rows]  # fmt: skip
    assert targets == [{"key": KEY}, {"key": other}]
    assert get(sidecar, "cache")["semantic"]["enabled"] is False  # the sidecar's own port
