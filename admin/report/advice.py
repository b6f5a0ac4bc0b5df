"""Advice from the ledger's digests (migration 005): the persona dimensions whose values never
changed the answer to the same request (candidates to drop from `X-Cache-Persona-Dims`), with
what dropping them would have saved, and the requests missed more than once (to warm).

A dimension changed the answer when, for one request digest (the request without its persona)
asked with two values of it and the same values of every other dimension, more than one answer
digest was recorded. Answers that differ for other reasons (temperature) count against it too:
the advice errs on the side of keeping a dimension.

Both are grouped in SQL, so only a row per dimension (or per repeated miss) leaves the database:
on a 10M-row ledger a week's digested rows are about a million."""

from __future__ import annotations

from typing import Any

from admin.queries import QueryRunner
from admin.report.model import DimensionAdvice, RepeatedMiss

# One row per (dimension, request digest, the other dimensions' values, this one's value) and
# then per comparison group (the same but this dimension's value), in one sort: `nth` numbers a
# value's rows in time order (created_at, then id), so its first row is known without another
# pass; the group's first value is the one whose first row came first. A comparison group with
# two or more values was compared; it changed the answer unless every answer digest in it is the
# same. Dropping the dimension would have saved each value's first MISS but the group's first
# (the answer stored for the first value would have served it).
_DIMENSIONS = """
WITH rows_ AS (
    SELECT p.key AS dim, r.request_digest AS q, {rest} AS rest, p.value AS val,
           r.answer_digest AS a, CASE WHEN r.cache_status = 'MISS' THEN r.cost ELSE 0 END AS paid,
           r.created_at AS at, {id} AS id,
           row_number() OVER (PARTITION BY p.key, r.request_digest, {rest}, p.value
                              ORDER BY r.created_at, r.id) AS nth
    FROM ai_requests r, {each}(r.persona) p
    WHERE r.created_at >= ? AND r.created_at < ? AND r.request_digest IS NOT NULL
      AND r.answer_digest IS NOT NULL
), vals AS (
    SELECT dim, q, rest, min(a) AS a_min, max(a) AS a_max,
           sum(paid) FILTER (WHERE nth = 1) AS first_paid,
           max(at) FILTER (WHERE nth = 1) AS first_at, max(id) FILTER (WHERE nth = 1) AS first_id
    FROM rows_ GROUP BY dim, q, rest, val
), groups_ AS (
    SELECT dim, count(*) AS n_vals, min(a_min) = max(a_max) AS same,
           sum(first_paid) - sum(first_paid) FILTER (WHERE nth = 1) AS saving
    FROM (SELECT vals.*, row_number() OVER (PARTITION BY dim, q, rest
                                            ORDER BY first_at, first_id) AS nth
          FROM vals) ranked
    GROUP BY dim, q, rest
)
SELECT dim, sum(CASE WHEN n_vals > 1 THEN 1 ELSE 0 END),
       sum(CASE WHEN n_vals > 1 AND NOT same THEN 1 ELSE 0 END),
       coalesce(sum(CASE WHEN n_vals > 1 AND same THEN saving ELSE 0 END), 0)
FROM groups_ GROUP BY dim"""
# PostgreSQL's ids are uuids: as text they are compared bytewise ("C"), as it orders uuids.
DIMENSIONS = {
    "postgres": _DIMENSIONS.format(
        each="jsonb_each_text", rest="r.persona - p.key", id='r.id::text COLLATE "C"'
    ),
    "sqlite": _DIMENSIONS.format(
        each="json_each", rest="""json_remove(r.persona, '$."' || p.key || '"')""", id="r.id"
    ),
}

REPEATED_MISSES = """
SELECT request_digest, model, request_type, count(*), sum(cost) FROM ai_requests
WHERE created_at >= ? AND created_at < ? AND request_digest IS NOT NULL
  AND cache_status = 'MISS'
GROUP BY 1, 2, 3 HAVING count(*) > 1
ORDER BY 4 DESC, 5 DESC, 1 LIMIT ?"""
TOP_MISSES = 20


async def dimension_advice(runner: QueryRunner, window: tuple[Any, Any]) -> list[DimensionAdvice]:
    rows = await runner.run("report.dimensions", DIMENSIONS[runner.dialect], window)
    out = []
    for dim, compared, changed, saving in sorted(rows, key=lambda row: str(row[0])):
        compared, changed = int(compared or 0), int(changed or 0)
        never = compared > 0 and changed == 0
        out.append(DimensionAdvice(
            dimension=str(dim), requests_compared=compared, changed_answer=changed,
            never_changed=never, saving_usd=float(saving or 0) if changed == 0 else 0.0,
        ))  # fmt: skip
    return out


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
