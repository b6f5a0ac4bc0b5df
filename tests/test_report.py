"""`sidecache report` on a known synthetic ledger (both sinks): every figure equals what the
test computes from the records it wrote."""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
from collections import defaultdict
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from admin.queries import QueryRunner
from admin.report.build import build_report, parse_window, window_end
from admin.report.markdown import render_markdown
from admin.report.model import GroupSpend
from proxy.ledger.records import LedgerRecord, new_record_id, pack
from proxy.settings import BudgetSettings
from proxy.vocabulary import CacheStatus, Endpoint
from tests.admin_support import TOKENS, call
from tests.fixtures.sidecar import LoopThread, SidecarFactory
from tests.ledger_db import LedgerDb
from tests.test_budget import store_override

NOW = datetime(2026, 12, 7, 12, 30, tzinfo=UTC)
MODELS = ("gpt-4o-mini", "o4-mini", "text-embedding-3-small")
TENANTS = ("t-alpha", "t-bravo")
KINDS = ("chat.completions", "embeddings")


def synthetic(now: datetime, seed: int = 3) -> list[LedgerRecord]:
    """A week, the week before, a week older still (outside both) and some of today."""
    rng = random.Random(seed)
    end = window_end(now)
    spans = [(end - timedelta(days=7), now - timedelta(minutes=1)),
             (end - timedelta(days=14), end - timedelta(days=7, seconds=1)),
             (end - timedelta(days=21), end - timedelta(days=14, seconds=1)),
             (now.replace(hour=0, minute=0, second=0, microsecond=0), now)]  # fmt: skip
    out = []
    for span_no, (low, high) in enumerate(spans):
        for i in range(60):
            hit = rng.random() < 0.4
            persona = {"experience": rng.choice(("beginner", "expert"))} if i % 3 else {}
            if i % 2:
                persona["lang"] = rng.choice(("en", "fr"))
            seconds = rng.randint(0, int((high - low).total_seconds()))
            out.append(LedgerRecord(
                id=new_record_id(), tenant=rng.choice(TENANTS),
                user_id=rng.choice(("u1", "u2", None)), persona=persona,
                request_type=rng.choice(KINDS),  # type: ignore[arg-type]
                model=MODELS[(i + span_no) % len(MODELS)],
                cost=0.0 if hit else round(rng.random() / 10, 6),
                saved_cost=round(rng.random() / 10, 6) if hit else 0.0,
                cache_hit=hit, created_at=low + timedelta(seconds=seconds),
            ))  # fmt: skip
    return out + digested(now)


def digested(now: datetime) -> list[LedgerRecord]:
    """Two prompts asked by every (experience, lang) pair, English first: the answer follows
    the experience, never the language; and a third prompt missed three times (to warm)."""
    out = []
    base = now - timedelta(days=2)
    for n, (q, lang, experience) in enumerate(
        (q, lang, e) for lang in ("en", "fr") for q in ("q1", "q2") for e in ("beginner", "expert")
    ):
        out.append(LedgerRecord(
            id=new_record_id(), tenant="t-alpha", user_id=None,
            persona={"experience": experience, "lang": lang}, request_type=Endpoint.CHAT,
            model="gpt-4o-mini", cost=0.01 * (n + 1), cache_status=CacheStatus.MISS,
            created_at=base + timedelta(minutes=n), request_digest=f"digest-{q}",
            answer_digest=f"answer-{q}-{experience}",
        ))  # fmt: skip
    for n in range(3):
        out.append(LedgerRecord(
            id=new_record_id(), tenant="t-bravo", user_id="u1", persona={},
            request_type=Endpoint.EMBEDDINGS, model="text-embedding-3-small", cost=0.002,
            cache_status=CacheStatus.MISS, created_at=base + timedelta(hours=1, minutes=n),
            request_digest="digest-q3", answer_digest="answer-q3",
        ))  # fmt: skip
    return out


async def write(db: LedgerDb, records: list[LedgerRecord]) -> None:
    sink = db.sink()
    try:
        await sink.migrate()
        assert await sink.write([pack(r) for r in records]) == len(records)
    finally:
        await sink.close()


@pytest.fixture(params=["sqlite", "postgres"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> LedgerDb:
    if request.param == "postgres":
        return LedgerDb("postgres", request.getfixturevalue("postgres_dsn"))
    return LedgerDb("sqlite", str(tmp_path / "ledger.db"))


def expected_spend(records: Iterable[LedgerRecord], attr: str, now: datetime) -> dict[str, Any]:
    end = window_end(now)
    start, prev = end - timedelta(days=7), end - timedelta(days=14)
    sums: dict[str, list[float]] = defaultdict(lambda: [0, 0, 0.0, 0.0, 0, 0.0, 0.0])
    for r in records:
        row = sums[str(getattr(r, attr))]
        if start <= r.created_at < end:
            row[0] += 1
            row[1] += r.cache_hit
            row[2] += r.cost
            row[3] += r.saved_cost
        elif prev <= r.created_at < start:
            row[4] += 1
            row[5] += r.cost
            row[6] += r.saved_cost
    return {k: v for k, v in sums.items() if v[0] or v[4]}


def check_spend(got: list[GroupSpend], want: dict[str, Any]) -> None:
    assert sorted(g.key for g in got) == sorted(want)
    for g in got:
        n, hits, cost, saved, prev_n, prev_cost, prev_saved = want[g.key]
        assert (g.requests, g.hits, g.prev_requests) == (n, hits, prev_n), g.key
        assert g.cost == pytest.approx(cost) and g.saved == pytest.approx(saved)
        assert g.prev_cost == pytest.approx(prev_cost)
        assert g.prev_saved == pytest.approx(prev_saved)
        assert g.cost_change == pytest.approx(cost - prev_cost)
        assert g.saved_change == pytest.approx(saved - prev_saved)
    assert [g.cost for g in got] == sorted((g.cost for g in got), reverse=True)


def daily_spend(records: list[LedgerRecord], *attrs: str) -> dict[tuple[str, ...], float]:
    """Today's cost per value of `attrs` (a user's budget is counted per tenant and user)."""
    day = NOW.replace(hour=0, minute=0, second=0, microsecond=0)
    out: dict[tuple[str, ...], float] = defaultdict(float)
    for r in records:
        key = tuple(getattr(r, attr) for attr in attrs)
        if r.created_at >= day and all(key):
            out[key] += r.cost
    return out


async def test_the_report_gives_the_figures_of_a_known_fortnight(db: LedgerDb) -> None:
    records = synthetic(NOW)
    await write(db, records)
    tenants = {k[0]: v for k, v in daily_spend(records, "tenant").items()}
    users = daily_spend(records, "tenant", "user_id")
    # t-alpha's daily limit is 10 % above its spend today (near), t-bravo's twice it (not).
    await store_override(db, "tenant", "t-alpha", tenants["t-alpha"] * 1.1, None)
    await store_override(db, "tenant", "t-bravo", tenants["t-bravo"] * 2, None)
    user_limit = max(users.values()) * 1.05
    sink = db.sink()
    try:
        report = await build_report(
            QueryRunner(sink), window="7d", now=NOW, overrides=await sink.fetch_overrides(),
            budgets=BudgetSettings(user_daily_usd=user_limit),
        )  # fmt: skip
    finally:
        await sink.close()
    check_spend(report.by_model, expected_spend(records, "model", NOW))
    check_spend(report.by_tenant, expected_spend(records, "tenant", NOW))
    check_spend(report.by_endpoint, expected_spend(records, "request_type", NOW))
    week = [r for r in records if window_end(NOW) - timedelta(days=7) <= r.created_at]
    assert report.total_cost == pytest.approx(sum(r.cost for r in week))
    assert report.total_saved == pytest.approx(sum(r.saved_cost for r in week))

    persona: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0, 0, 0.0])
    for r in week:
        for dim, value in r.persona.items():
            persona[(dim, value)][0] += 1
            persona[(dim, value)][1] += r.cache_hit
            persona[(dim, value)][2] += r.saved_cost
    got = {(p.dimension, p.value): p for p in report.persona}
    assert got.keys() == persona.keys() and len(got) == 4
    for key, (n, hits, saved) in persona.items():
        assert (got[key].requests, got[key].hits) == (n, hits)
        assert got[key].hit_rate == pytest.approx(hits / n)
        assert got[key].saved == pytest.approx(saved)

    near = {(b.scope, b.tenant, b.subject, b.period): b for b in report.budgets_near}
    alpha = ("tenant", "t-alpha", "t-alpha", "daily")
    want = {alpha} | {
        ("user", t, u, "daily") for (t, u), spent in users.items() if spent >= 0.8 * user_limit
    }
    assert set(near) == want and len(want) >= 2
    assert near[alpha].share == pytest.approx(1 / 1.1)
    assert near[alpha].spent_usd == pytest.approx(tenants["t-alpha"])

    advice = {d.dimension: d for d in report.dimensions}
    fr_misses = [r for r in digested(NOW) if r.persona.get("lang") == "fr"]
    assert advice["lang"].never_changed and advice["lang"].requests_compared == 4
    assert advice["lang"].saving_usd == pytest.approx(sum(r.cost for r in fr_misses))
    assert not advice["experience"].never_changed
    assert advice["experience"].changed_answer == advice["experience"].requests_compared == 4
    misses: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    for r in digested(NOW):
        misses[(str(r.request_digest), r.model, r.request_type)].append(r.cost)
    got_misses = {(m.request_digest, m.model, m.endpoint): m for m in report.repeated_misses}
    assert got_misses.keys() == misses.keys()
    for where, costs in misses.items():
        assert got_misses[where].misses == len(costs)
        assert got_misses[where].cost == pytest.approx(sum(costs))

    assert {q.name for q in report.slowest} >= {"report.spend_model", "report.persona"}
    text = render_markdown(report)
    top = report.by_model[0]
    assert "## Spend and savings by model" in text
    assert f"| {top.key} | {top.requests} | " in text
    assert "Candidates to leave out of `X-Cache-Persona-Dims`: lang." in text
    assert f"${report.total_cost:,.4f}" in text


def test_windows_parse() -> None:
    assert parse_window("24h") == timedelta(hours=24)
    assert parse_window("30d") == timedelta(days=30)
    with pytest.raises(ValueError):
        parse_window("7w")


def test_the_cli_writes_the_report_of_the_configured_ledger(db: LedgerDb, tmp_path: Path) -> None:
    now = datetime.now(UTC)
    records = [r for r in synthetic(now, seed=5) if r.created_at < now - timedelta(days=1)]
    asyncio.run(write(db, records))
    env = dict(os.environ)
    key = "DATABASE_URL" if db.kind == "postgres" else "LEDGER_PATH"
    env[key] = db.target
    out = tmp_path / "report.md"
    done = subprocess.run(
        [sys.executable, "-m", "proxy", "report", "--window", "7d", "--out", str(out)],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    text = out.read_text()
    week = [r for r in records if r.created_at >= window_end(now) - timedelta(days=7)]
    assert f"- Spend: ${sum(r.cost for r in week):,.4f}" in text
    for model in MODELS:
        assert f"| {model} |" in text
    page = tmp_path / "report.html"
    done = subprocess.run(
        [sys.executable, "-m", "proxy", "report", "--format", "html", "--out", str(page)],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    html = page.read_text()
    assert html.startswith("<!doctype html>") and html.count('<svg class="chart"') == 3
    assert f"Spend: ${sum(r.cost for r in week):,.4f}" in html


def test_the_proxy_records_the_digests_of_a_miss_that_stored_its_answer(
    make_sidecar: SidecarFactory, loop_thread: LoopThread
) -> None:
    sidecar = make_sidecar()
    client = sidecar.client()
    question = [{"role": "user", "content": "Explain tides."}]

    def ask(user: str, experience: str, content: Any = question) -> str:
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=content, max_tokens=5,
            extra_headers={"X-User-Id": user, "X-Persona-Experience": experience},
        )  # fmt: skip
        return str(raw.headers["x-cache"])

    assert ask("u1", "beginner") == "MISS"
    assert ask("u2", "expert") == "MISS"  # another persona: another entry, the same prompt
    assert ask("u3", "expert") == "HIT"
    assert ask("u4", "expert", [{"role": "user", "content": "Explain waves."}]) == "MISS"
    loop_thread.run(sidecar.runtime.ledger.flush())
    ledger = sidecar.runtime.settings.ledger
    rows = asyncio.run(LedgerDb("sqlite", ledger.path).rows_by_id()).values()
    by_user = {row["user_id"]: row for row in rows}
    u1, u2, u3, u4 = (by_user[u] for u in ("u1", "u2", "u3", "u4"))
    assert u1["request_digest"] == u2["request_digest"] != u4["request_digest"]
    assert u1["answer_digest"] == u2["answer_digest"]  # the stub answers the prompt alone
    assert len(u1["answer_digest"]) == 16 and u4["answer_digest"] is not None
    assert u3["request_digest"] is None and u3["answer_digest"] is None  # a hit pays nothing


def test_the_admin_port_answers_the_report(
    make_sidecar: SidecarFactory, loop_thread: LoopThread
) -> None:
    sidecar = make_sidecar(ADMIN_TOKENS=TOKENS)
    records = [r for r in synthetic(datetime.now(UTC), seed=9) if r.created_at < datetime.now(UTC)]
    ledger = sidecar.runtime.settings.ledger
    loop_thread.run(write(LedgerDb("sqlite", ledger.path), records))
    assert call(sidecar, "/api/admin/report", token=None).status == 401
    assert call(sidecar, "/api/admin/report?window=2w").status == 400
    answer = call(sidecar, "/api/admin/report?window=7d")
    assert answer.status == 200, answer.body
    body = answer.json()
    end = datetime.strptime(body["end"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    week = [r for r in records if end - timedelta(days=7) <= r.created_at < end]
    assert body["window"] == "7d" and body["dialect"] == "sqlite"
    assert body["total_cost"] == pytest.approx(sum(r.cost for r in week))
    assert {d["dimension"]: d["never_changed"] for d in body["dimensions"]} == {
        "experience": False, "lang": True,
    }  # fmt: skip
    markdown = call(sidecar, "/api/admin/report?window=7d&format=md")
    assert markdown.status == 200 and markdown.headers["content-type"].startswith("text/markdown")
    text = markdown.body.decode()
    assert f"- Spend: ${sum(r.cost for r in week):,.4f}" in text
    assert "Candidates to leave out of `X-Cache-Persona-Dims`: lang." in text
    page = call(sidecar, "/api/admin/report?format=html")  # the window defaults to 7d
    assert page.status == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in page.headers["content-security-policy"]
    html = page.body.decode()
    assert html.startswith("<!doctype html>") and html.count('<svg class="chart"') == 3
    assert f"Spend: ${sum(r.cost for r in week):,.4f}" in html
    assert call(sidecar, "/api/admin/report?format=pdf").status == 400
