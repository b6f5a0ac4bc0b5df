"""Test helpers for the ledger: one interface over a Postgres database and a SQLite file, to
read back raw rows, the writer's two roll-ups and the same roll-ups computed by GROUP BY."""

from __future__ import annotations

import random
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import msgspec

from proxy.ledger.postgres import PostgresSink
from proxy.ledger.records import LedgerRecord, new_record_id
from proxy.ledger.sink import LedgerSink
from proxy.ledger.sqlite import SqliteSink

SUMS = ("requests", "hits", "errors", "prompt_tokens", "completion_tokens", "cached_tokens",
        "cache_write_tokens", "reasoning_tokens")  # fmt: skip
FLOAT_SUMS = ("cost", "saved_cost", "response_ms_sum")
# The per-tenant roll-up's rows are keyed like the per-user one's, under this user id.
ALL_USERS = "<every user>"
_COLUMNS = ", ".join((*SUMS, *FLOAT_SUMS))
_AGGREGATES = {
    "postgres": """count(*) AS requests, count(*) FILTER (WHERE cache_hit) AS hits,
       count(*) FILTER (WHERE status >= 400) AS errors,""",
    "sqlite": "count(*) AS requests, sum(cache_hit) AS hits, sum(status >= 400) AS errors,",
}
_HOUR = {
    "postgres": "date_trunc('hour', created_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'",
    "sqlite": "strftime('%Y-%m-%dT%H:00:00.000000Z', created_at)",
}
_GROUPED = """
SELECT {hour} AS hour, tenant, {user} AS user_id, model, request_type, {aggregates}
       sum(prompt_tokens) AS prompt_tokens, sum(completion_tokens) AS completion_tokens,
       sum(cached_tokens) AS cached_tokens, sum(cache_write_tokens) AS cache_write_tokens,
       sum(reasoning_tokens) AS reasoning_tokens, sum(cost) AS cost, sum(saved_cost) AS saved_cost,
       sum(response_time_ms) AS response_ms_sum
FROM ai_requests GROUP BY 1, 2, 3, 4, 5"""
_USER = {"user": "coalesce(user_id, '')", "tenant": f"'{ALL_USERS}'"}
_ROLLUP = {
    "user": f"SELECT hour, tenant, user_id, model, request_type, {_COLUMNS} FROM ai_usage_hourly",
    "tenant": f"SELECT hour, tenant, '{ALL_USERS}' AS user_id, model, request_type, {_COLUMNS} "
    "FROM ai_usage_tenant_hourly",
}


RollupMap = dict[tuple[Any, ...], dict[str, Any]]


class LedgerDb:
    def __init__(self, kind: str, target: str) -> None:
        self.kind = kind
        self.target = target  # DSN or file path

    def sink(self, **kwargs: Any) -> LedgerSink:
        if self.kind == "postgres":
            return PostgresSink(self.target, **kwargs)
        return SqliteSink(self.target, **kwargs)

    async def fetch(self, sql: str) -> list[dict[str, Any]]:
        if self.kind == "postgres":
            conn = await asyncpg.connect(self.target)
            try:
                return [dict(row) for row in await conn.fetch(sql)]
            finally:
                await conn.close()
        with sqlite3.connect(self.target) as conn:
            conn.row_factory = sqlite3.Row
            return [dict(row) for row in conn.execute(sql)]

    async def execute(self, sql: str) -> None:
        """A statement that returns no rows, committed."""
        await self.fetch(sql)

    async def count(self) -> int:
        rows = await self.fetch("SELECT count(*) AS n, count(DISTINCT id) AS d FROM ai_requests")
        assert rows[0]["n"] == rows[0]["d"], "an id was written twice"
        return int(rows[0]["n"])

    async def rows_by_id(self) -> dict[str, dict[str, Any]]:
        return {str(row["id"]): row for row in await self.fetch("SELECT * FROM ai_requests")}

    async def rollup(self, per: str = "user") -> RollupMap:
        """The writer's roll-up per `user` or per `tenant`."""
        return _keyed(await self.fetch(_ROLLUP[per]))

    async def grouped(self, per: str = "user") -> RollupMap:
        """The same roll-up computed by GROUP BY over the raw rows."""
        hour, aggregates = _HOUR[self.kind], _AGGREGATES[self.kind]
        return _keyed(
            await self.fetch(_GROUPED.format(hour=hour, user=_USER[per], aggregates=aggregates))
        )


def _keyed(rows: list[dict[str, Any]]) -> RollupMap:
    out: RollupMap = {}
    for row in rows:
        hour = row["hour"]
        if isinstance(hour, str):
            hour = datetime.fromisoformat(hour)
        key = (hour, row["tenant"], row["user_id"], row["model"], row["request_type"])
        out[key] = {name: row[name] for name in (*SUMS, *FLOAT_SUMS)}
    return out


def assert_rollup_matches(rollup: RollupMap, grouped: RollupMap) -> None:
    assert rollup.keys() == grouped.keys()
    for key, totals in grouped.items():
        for name in SUMS:
            assert int(rollup[key][name]) == int(totals[name]), (key, name)
        for name in FLOAT_SUMS:
            assert abs(float(rollup[key][name]) - float(totals[name])) <= 1e-9 * max(
                1.0, abs(float(totals[name]))
            ), (key, name)


def make_records(n: int, *, seed: int = 7, start: datetime | None = None) -> list[LedgerRecord]:
    """`n` varied records over three hours: tenants, users (some none), models, kinds, hits."""
    rng = random.Random(seed)
    base = start or datetime(2026, 11, 24, 9, 0, tzinfo=UTC)
    kinds = ("chat.completions", "completions", "embeddings", "moderations")
    out = []
    for i in range(n):
        hit = rng.random() < 0.4
        status = 200 if rng.random() < 0.9 else 502
        out.append(
            with_token_kinds(
                i,
                hit,
                LedgerRecord(
                    id=new_record_id(),
                    tenant=rng.choice(("t-alpha", "t-bravo")),
                    user_id=rng.choice(("u1", "u2", "u3", None)),
                    persona={"experience": rng.choice(("beginner", "expert"))} if i % 3 else {},
                    request_type=rng.choice(kinds),  # type: ignore[arg-type]
                    model=rng.choice(("gpt-4o-mini", "text-embedding-3-small", "o4-mini")),
                    prompt_tokens=rng.randint(1, 4000),
                    completion_tokens=rng.randint(0, 800),
                    cached_tokens=rng.randint(0, 500),
                    cost=0.0 if hit else rng.random() / 100,
                    saved_cost=rng.random() / 100 if hit else 0.0,
                    response_time_ms=rng.random() * 900,
                    upstream_ms=None if hit else rng.random() * 800,
                    cache_hit=hit,
                    cache_status="HIT" if hit else rng.choice(("MISS", "BYPASS", "COALESCED")),
                    status=status,
                    created_at=base + timedelta(seconds=rng.randint(0, 3 * 3600 - 1)),
                ),
            )
        )
    return out


def with_token_kinds(i: int, hit: bool, rec: LedgerRecord) -> LedgerRecord:
    """The token kinds and tier of migration 004, made from the record's own numbers (no more
    draws, so every seed's records stay what they were)."""
    return msgspec.structs.replace(
        rec,
        cache_write_tokens=rec.prompt_tokens // 10 if i % 2 else 0,
        reasoning_tokens=rec.completion_tokens // 3,
        service_tier="flex" if i % 5 == 0 and not hit else None,
    )


def sqlite_path(tmp_path: Path) -> str:
    return str(tmp_path / "ledger.db")
