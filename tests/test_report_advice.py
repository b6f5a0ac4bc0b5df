"""The report's persona advice, grouped in SQL (admin/report/advice.py), against the same rule
computed here row by row in Python over a random ledger: both sinks, three dimensions, requests
asked by several personas, answers that follow one dimension for some prompts and nothing for
others, hits and misses, and rows that share a timestamp (ordered by id, as the SQL is)."""

from __future__ import annotations

import random
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from admin.queries import QueryRunner
from admin.report.advice import dimension_advice
from admin.report.build import window_end
from proxy.ledger.records import LedgerRecord, new_record_id
from proxy.vocabulary import CacheStatus, Endpoint
from tests.ledger_db import LedgerDb
from tests.test_report import write

NOW = datetime(2026, 12, 7, 12, 30, tzinfo=UTC)
VALUES = {"tone": ("plain", "warm"), "lang": ("en", "fr", "de"), "tier": ("free", "pro")}
# Which dimension each prompt's answer follows (None: the same answer for everyone).
FOLLOWS = {"q0": None, "q1": None, "q2": "tone", "q3": None, "q4": "tone", "q5": None}
STATUSES = (CacheStatus.MISS, CacheStatus.MISS, CacheStatus.HIT, CacheStatus.COALESCED)


def ledger(seed: int) -> list[LedgerRecord]:
    rng = random.Random(seed)
    base = NOW - timedelta(days=3)
    ids = sorted(new_record_id() for _ in range(400))
    rng.shuffle(ids)  # rows sharing a timestamp are ordered by id, not by insertion
    out = []
    for n, record_id in enumerate(ids):
        q = rng.choice(sorted(FOLLOWS))
        persona = {dim: rng.choice(values) for dim, values in VALUES.items() if rng.random() < 0.8}
        follows = FOLLOWS[q]
        answer = f"{q}-{persona.get(follows, '')}" if follows else q
        out.append(LedgerRecord(
            id=record_id, tenant="t-alpha", user_id=None, persona=persona,
            request_type=Endpoint.CHAT, model="gpt-4o-mini",
            cost=round(rng.random() / 100, 6), cache_status=rng.choice(STATUSES),
            created_at=base + timedelta(minutes=n // 3),  # three rows a minute
            request_digest=q, answer_digest=answer,
        ))  # fmt: skip
    return out


def expected(records: list[LedgerRecord]) -> dict[str, tuple[int, int, float]]:
    """(compared, changed, saving) per dimension, as the rule reads: among one prompt's rows
    that agree on every other dimension, was the answer ever different between two values of
    this one; if never, the misses that were the first of their value after another value's."""
    start = window_end(NOW) - timedelta(days=7)
    rows = sorted((r for r in records if r.created_at >= start), key=lambda r: (r.created_at, r.id))
    out = {}
    for dim in sorted({d for r in rows for d in r.persona}):
        groups: dict[tuple[object, ...], list[LedgerRecord]] = defaultdict(list)
        for r in rows:
            if dim in r.persona:
                rest = tuple(sorted((k, v) for k, v in r.persona.items() if k != dim))
                groups[(r.request_digest, rest)].append(r)
        compared = changed = 0
        saving = 0.0
        for group in groups.values():
            if len({r.persona[dim] for r in group}) < 2:
                continue
            compared += 1
            if len({r.answer_digest for r in group}) > 1:
                changed += 1
                continue
            seen: set[str] = set()
            for r in group:
                if r.cache_status == CacheStatus.MISS and seen and r.persona[dim] not in seen:
                    saving += r.cost
                seen.add(r.persona[dim])
        out[dim] = (compared, changed, saving if changed == 0 else 0.0)
    return out


@pytest.fixture(params=["sqlite", "postgres"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> LedgerDb:
    if request.param == "postgres":
        return LedgerDb("postgres", request.getfixturevalue("postgres_dsn"))
    return LedgerDb("sqlite", str(tmp_path / "ledger.db"))


@pytest.mark.parametrize("seed", [1, 2])
async def test_the_sql_advice_is_the_rule_computed_row_by_row(db: LedgerDb, seed: int) -> None:
    records = ledger(seed)
    await write(db, records)
    sink = db.sink()
    try:
        runner = QueryRunner(sink)
        end = window_end(NOW)
        got = await dimension_advice(runner, (runner.at(end - timedelta(days=7)), runner.at(end)))
    finally:
        await sink.close()
    want = expected(records)
    assert [d.dimension for d in got] == sorted(want) == ["lang", "tier", "tone"]
    for advice in got:
        compared, changed, saving = want[advice.dimension]
        assert (advice.requests_compared, advice.changed_answer) == (compared, changed)
        assert advice.never_changed == (compared > 0 and changed == 0)
        assert advice.saving_usd == pytest.approx(saving, abs=1e-12)
    by_dim = {d.dimension: d for d in got}
    assert by_dim["tone"].changed_answer > 0 and not by_dim["tone"].never_changed
    assert by_dim["lang"].never_changed and by_dim["lang"].saving_usd > 0
