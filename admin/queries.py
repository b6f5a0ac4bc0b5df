"""The analytics queries' runner: one SQL text for both ledgers (`?` placeholders, numbered for
PostgreSQL), every query timed, the slowest kept with their parameters so `performance` can
EXPLAIN exactly what ran and suggest indexes or materialized views from the plans."""

from __future__ import annotations

import heapq
import itertools
import re
import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import msgspec

from proxy.failures import StoreUnavailable
from proxy.ledger import COLUMNS, AdminLedger

SLOW_KEEP = 10
_PLACEHOLDER = re.compile(r"\?")
_SEQ_SCAN = re.compile(r"^SCAN (ai_requests)\b(?!.*USING)", re.IGNORECASE)


class Suggestion(msgspec.Struct):
    query: str
    kind: str  # "index" or "materialized_view"
    reason: str
    sql: str


class SlowQuery:
    __slots__ = ("ms", "name", "params", "rows", "sql")

    def __init__(self, name: str, sql: str, params: tuple[Any, ...], ms: float, rows: int):
        self.name, self.sql, self.params, self.ms, self.rows = name, sql, params, ms, rows


class QueryRunner:
    """Runs read queries on the ledger's own database (the pool on PostgreSQL, the sink's
    thread on SQLite) and remembers the slowest ones of this process."""

    def __init__(self, sink: object, keep: int = SLOW_KEEP) -> None:
        if not isinstance(sink, AdminLedger):
            raise TypeError(f"no analytics for a {type(sink).__name__} ledger")
        self._sink = sink
        self.dialect = sink.name
        self._keep = keep
        self._slow: list[tuple[float, int, SlowQuery]] = []  # min-heap on ms
        self._seq = itertools.count()

    def at(self, moment: datetime) -> Any:
        """A timestamp parameter in the form the ledger's columns hold."""
        return self._sink.timestamp_param(moment)

    def sql(self, text: str) -> str:
        if self.dialect == "sqlite":
            return text
        numbers = itertools.count(1)
        return _PLACEHOLDER.sub(lambda _: f"${next(numbers)}", text)

    async def run(self, name: str, text: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        sql = self.sql(text)
        started = time.perf_counter()
        try:
            rows = await self._sink.fetch(sql, params)
        except Exception as exc:
            raise StoreUnavailable(
                f"The ledger database cannot answer ({type(exc).__name__}).",
                code="ledger_unavailable",
            ) from exc  # fmt: skip
        ms = (time.perf_counter() - started) * 1000
        entry = (ms, next(self._seq), SlowQuery(name, sql, tuple(params), ms, len(rows)))
        if len(self._slow) < self._keep:
            heapq.heappush(self._slow, entry)
        elif ms > self._slow[0][0]:
            heapq.heapreplace(self._slow, entry)
        return rows

    def slowest(self) -> list[SlowQuery]:
        return [entry[2] for entry in sorted(self._slow, key=lambda e: -e[0])]

    async def suggestions(self, queries: list[SlowQuery]) -> list[Suggestion]:
        """EXPLAIN of each distinct query that ran; an index where a plan scans raw rows
        sequentially with a filter, a materialized view where it reads raw rows at all."""
        seen: dict[str, SlowQuery] = {q.sql: q for q in queries}
        found: list[Suggestion] = []
        for query in seen.values():
            try:
                found += await self._explain(query)
            except Exception:  # a plan is advice: never fail the call for it
                continue
        return found

    async def _explain(self, query: SlowQuery) -> list[Suggestion]:
        if self.dialect == "postgres":
            rows = await self._sink.fetch("EXPLAIN (FORMAT JSON) " + query.sql, query.params)
            plan = rows[0][0]
            nodes = list(_pg_nodes(msgspec.json.decode(plan) if isinstance(plan, str) else plan))
            seq = [n for n in nodes if n.get("Node Type") == "Seq Scan"
                   and n.get("Relation Name") == "ai_requests" and n.get("Filter")]  # fmt: skip
            raw = any(n.get("Relation Name") == "ai_requests" for n in nodes)
            filters = [str(n["Filter"]) for n in seq]
        else:
            rows = await self._sink.fetch("EXPLAIN QUERY PLAN " + query.sql, query.params)
            details = [str(row[-1]) for row in rows]
            seq = [d for d in details if _SEQ_SCAN.match(d)]
            raw = any("ai_requests" in d for d in details)
            filters = seq
        return _advice(query.name, seq != [], raw, filters)


def _advice(name: str, seq_scan: bool, raw: bool, filters: list[str]) -> list[Suggestion]:
    out: list[Suggestion] = []
    if seq_scan:
        out.append(Suggestion(
            query=name, kind="index",
            reason="sequential scan of ai_requests with a filter: " + "; ".join(filters)[:300],
            sql=f"CREATE INDEX ON ai_requests ({', '.join(_filtered_columns(filters))})",
        ))  # fmt: skip
    if raw:
        out.append(Suggestion(
            query=name, kind="materialized_view",
            reason="reads raw ai_requests rows on every call; an hourly roll-up would not",
            sql=f"CREATE MATERIALIZED VIEW {name.replace('.', '_')}_hourly AS "
                "<this query grouped by date_trunc('hour', created_at)>",
        ))  # fmt: skip
    return out


def _filtered_columns(filters: list[str]) -> list[str]:
    """The ai_requests columns a filter names, created_at (the window's range) last so the
    index serves the other tests too; created_at alone when the plan names none."""
    text = " ".join(filters)
    named = [c for c in COLUMNS if c != "created_at" and re.search(rf"\b{c}\b", text)]
    return [*named, "created_at"]


def _pg_nodes(plan: Any) -> Any:
    """Every node of an EXPLAIN (FORMAT JSON) plan tree."""
    if isinstance(plan, list):
        for item in plan:
            yield from _pg_nodes(item)
    elif isinstance(plan, dict):
        node = plan.get("Plan", plan)
        yield node
        for child in node.get("Plans", []):
            yield from _pg_nodes(child)
