"""Advice from the ledger's digests (migration 005): the persona dimensions whose values never
changed the answer to the same request (candidates to drop from `X-Cache-Persona-Dims`), with
what dropping them would have saved, and the requests missed more than once (to warm).

A dimension changed the answer when, for one request digest (the request without its persona)
asked with two values of it and the same values of every other dimension, more than one answer
digest was recorded. Answers that differ for other reasons (temperature) count against it too:
the advice errs on the side of keeping a dimension."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import msgspec

from admin.queries import QueryRunner
from admin.report.model import DimensionAdvice, RepeatedMiss

DIGESTED = """
SELECT request_digest, persona, answer_digest, cost, cache_status FROM ai_requests
WHERE created_at >= ? AND created_at < ? AND request_digest IS NOT NULL
  AND answer_digest IS NOT NULL
ORDER BY created_at, id"""

REPEATED_MISSES = """
SELECT request_digest, model, request_type, count(*), sum(cost) FROM ai_requests
WHERE created_at >= ? AND created_at < ? AND request_digest IS NOT NULL
  AND cache_status = 'MISS'
GROUP BY 1, 2, 3 HAVING count(*) > 1
ORDER BY 4 DESC, 5 DESC, 1 LIMIT ?"""
TOP_MISSES = 20

_Row = tuple[dict[str, str], str, float, str]  # persona, answer digest, cost, cache status


def _persona(value: Any) -> dict[str, str]:
    if isinstance(value, str):  # PostgreSQL's jsonb without a codec, SQLite's text
        value = msgspec.json.decode(value)
    return {str(k): str(v) for k, v in (value or {}).items()}


async def dimension_advice(runner: QueryRunner, window: tuple[Any, Any]) -> list[DimensionAdvice]:
    rows = await runner.run("report.digests", DIGESTED, window)
    groups: dict[str, list[_Row]] = defaultdict(list)
    for digest, persona, answer, cost, status in rows:
        groups[str(digest)].append((_persona(persona), str(answer), float(cost or 0), str(status)))
    dims = sorted({d for group in groups.values() for row in group for d in row[0]})
    return [_advise(dim, groups) for dim in dims]


def _advise(dim: str, groups: dict[str, list[_Row]]) -> DimensionAdvice:
    """Compares the answers within each request digest among rows that agree on every other
    persona dimension, so only this dimension's value differs between them."""
    compared = changed = 0
    saving = 0.0
    for group in groups.values():
        alike: dict[tuple[tuple[str, str], ...], list[_Row]] = defaultdict(list)
        for row in group:
            if dim in row[0]:
                alike[tuple(sorted((k, v) for k, v in row[0].items() if k != dim))].append(row)
        for valued in alike.values():
            if len({row[0][dim] for row in valued}) < 2:
                continue
            compared += 1
            if len({row[1] for row in valued}) > 1:
                changed += 1
                continue
            seen: set[str] = set()  # values already answered, in time order
            for persona, _, cost, status in valued:
                if status == "MISS" and seen and persona[dim] not in seen:
                    saving += cost  # the same answer, stored for another value, would have served
                seen.add(persona[dim])
    return DimensionAdvice(
        dimension=dim, requests_compared=compared, changed_answer=changed,
        never_changed=compared > 0 and changed == 0, saving_usd=saving if changed == 0 else 0.0,
    )  # fmt: skip


async def repeated_misses(runner: QueryRunner, window: tuple[Any, Any]) -> list[RepeatedMiss]:
    rows = await runner.run("report.repeated_misses", REPEATED_MISSES, (*window, TOP_MISSES))
    return [
        RepeatedMiss(
            request_digest=str(r[0]),
            model=str(r[1]),
            endpoint=str(r[2]),
            misses=int(r[3]),
            cost=float(r[4] or 0),
        )
        for r in rows
    ]
