"""The admin JSON API's dashboard endpoints after real traffic through the proxy (issue 5), on
the PostgreSQL and the SQLite ledger: the figures equal what was sent."""

from __future__ import annotations

import re
from typing import Any

import pytest

from proxy.fake_upstream.content import chat_prompt_tokens
from tests.admin_support import BASE, TOKENS, call, get
from tests.fixtures.sidecar import LoopThread, Sidecar, SidecarFactory, Stub

MODEL = "gpt-4o-mini"
MAX_TOKENS = 7
SHORT = "What is a prime number?"
LONG = "Explain, step by step and with many worked examples, how long division works. " * 4
BUCKET = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:00:00Z$")


@pytest.fixture(params=["postgres", "sqlite"])
def ledger_env(request: pytest.FixtureRequest) -> dict[str, str]:
    if request.param == "postgres":
        return {"DATABASE_URL": request.getfixturevalue("postgres_dsn")}
    return {}


def messages(question: str) -> Any:
    return [{"role": "user", "content": question}]


def ask(sidecar: Sidecar, user: str, question: str, **headers: str) -> str:
    raw = sidecar.client(**{"X-User-Id": user, **headers}).chat.completions.with_raw_response
    answer = raw.create(model=MODEL, messages=messages(question), max_tokens=MAX_TOKENS)
    return str(answer.headers["x-cache"])


def cost(sidecar: Sidecar, question: str) -> float:
    prompt = chat_prompt_tokens(messages(question))
    return sidecar.runtime.prices.cost(MODEL, prompt, 0, MAX_TOKENS)


@pytest.fixture
def busy(
    make_sidecar: SidecarFactory, loop_thread: LoopThread, ledger_env: dict[str, str]
) -> Sidecar:
    """u1 (persona expert) asks SHORT three times (MISS, HIT, HIT); u2 asks LONG once."""
    sidecar = make_sidecar(ADMIN_TOKENS=TOKENS, **ledger_env)
    seen = [ask(sidecar, "u1", SHORT, **{"X-Persona-Experience": "expert"}) for _ in range(3)]
    assert seen == ["MISS", "HIT", "HIT"]
    assert ask(sidecar, "u2", LONG) == "MISS"
    loop_thread.run(sidecar.runtime.ledger.flush())
    return sidecar


def test_overview(busy: Sidecar) -> None:
    short, long = cost(busy, SHORT), cost(busy, LONG)
    assert 0 < short < long
    for window in ("1h", "24h", "7d", "30d"):
        body = get(busy, f"overview?window={window}")
        assert body["window"] == window
        assert (body["requests"], body["hits"], body["errors"]) == (4, 2, 0)
        assert body["hit_rate"] == 0.5
        assert body["cost_usd"] == pytest.approx(short + long)
        assert body["saved_usd"] == pytest.approx(2 * short)
        assert body["completion_tokens"] == 4 * MAX_TOKENS
        assert body["latency"]["avg_ms"] > 0
        assert body["latency"]["p95_ms_approx"] >= 0
        assert body["unpriced_models"] == []
        assert body["ledger"]["written"] == 4
        assert body["ledger"]["sink"] == busy.runtime.ledger.sink.name


def test_costs_by_user_and_model(busy: Sidecar) -> None:
    short, long = cost(busy, SHORT), cost(busy, LONG)
    body = get(busy, "costs?window=24h&bucket=hour&group_by=user")
    assert (body["bucket"], body["group_by"]) == ("hour", "user")
    by_group = {point["group"]: point for point in body["series"]}
    assert set(by_group) == {"u1", "u2"}
    assert by_group["u1"]["requests"] == 3
    assert by_group["u1"]["cost_usd"] == pytest.approx(short)
    assert by_group["u1"]["saved_usd"] == pytest.approx(2 * short)
    assert by_group["u2"]["cost_usd"] == pytest.approx(long)
    assert all(BUCKET.match(point["bucket"]) for point in body["series"])
    assert body["total_cost_usd"] == pytest.approx(short + long)

    daily = get(busy, "costs?window=30d&bucket=day&group_by=model")
    assert [p["group"] for p in daily["series"]] == [MODEL]
    assert daily["series"][0]["bucket"].endswith("T00:00:00Z")
    assert daily["series"][0]["requests"] == 4
    for group_by in ("tenant", "request_type"):
        assert get(busy, f"costs?group_by={group_by}")["total_saved_usd"] == pytest.approx(
            2 * short
        )


def test_performance(busy: Sidecar) -> None:
    get(busy, "overview")  # some roll-up queries to be timed too
    get(busy, "cache")
    body = get(busy, "performance?window=1h")
    rows = {(r["endpoint"], r["cache_status"]): r for r in body["latency"]}
    assert set(rows) == {("chat.completions", "HIT"), ("chat.completions", "MISS")}
    assert rows[("chat.completions", "HIT")]["requests"] == 2
    assert rows[("chat.completions", "MISS")]["requests"] == 2
    for row in rows.values():
        assert 0 < row["p50_ms"] <= row["p95_ms"] <= row["p99_ms"] <= row["max_ms"]
    assert body["upstream_errors"] == []
    names = {q["name"] for q in body["slow_queries"]}
    assert {"overview.totals", "performance.latency"} <= names
    assert all(q["ms"] >= 0 for q in body["slow_queries"])
    views = {s["query"] for s in body["suggestions"] if s["kind"] == "materialized_view"}
    # The latency query reads raw rows (the roll-up keeps no cache status); roll-ups never do.
    assert {"performance.latency", "cache.by_persona"} <= views
    assert "overview.totals" not in views
    if busy.runtime.ledger.sink.name == "postgres":  # four rows: the planner scans them all
        indexes = {s["query"]: s["sql"] for s in body["suggestions"] if s["kind"] == "index"}
        assert indexes["performance.upstream_errors"] == (
            "CREATE INDEX ON ai_requests (status, created_at)"
        )


def test_users(busy: Sidecar) -> None:
    short, long = cost(busy, SHORT), cost(busy, LONG)
    body = get(busy, "users?window=24h&limit=5")
    assert [u["user_id"] for u in body["by_cost"]] == ["u2", "u1"]
    assert [u["user_id"] for u in body["by_requests"]] == ["u1", "u2"]
    u1 = body["by_requests"][0]
    assert (u1["requests"], u1["hits"], u1["hit_rate"]) == (3, 2, pytest.approx(2 / 3, 1e-5))
    assert u1["cost_usd"] == pytest.approx(short)
    assert body["by_cost"][0]["cost_usd"] == pytest.approx(long)
    budgets = {(b["scope"], b["period"]): b for b in u1["budgets"]}
    assert set(budgets) == {(s, p) for s in ("tenant", "user") for p in ("daily", "monthly")}
    assert budgets[("user", "daily")]["spent_usd"] == pytest.approx(short)
    assert budgets[("tenant", "monthly")]["spent_usd"] == pytest.approx(short + long)
    assert [u["user_id"] for u in get(busy, "users?limit=1")["by_cost"]] == ["u2"]


def test_cache(busy: Sidecar) -> None:
    short = cost(busy, SHORT)
    body = get(busy, "cache?window=1h")
    assert body["backend"] == "memory"
    assert body["entries"] == 2
    assert body["bytes"] > 0
    assert body["by_endpoint"] == [{
        "key": "chat.completions", "requests": 4, "hits": 2, "hit_rate": 0.5,
        "saved_usd": pytest.approx(2 * short),
    }]  # fmt: skip
    assert [m["key"] for m in body["by_model"]] == [MODEL]
    assert body["by_persona"] == [{
        "dimension": "experience", "value": "expert", "requests": 3, "hits": 2,
        "hit_rate": pytest.approx(2 / 3, 1e-5),
    }]  # fmt: skip
    assert body["saved_usd"] == pytest.approx(2 * short)


def test_empty_ledger_answers_zeros(make_sidecar: SidecarFactory) -> None:
    sidecar = make_sidecar(ADMIN_TOKENS=TOKENS)
    body = get(sidecar, "overview")
    assert (body["requests"], body["hit_rate"], body["cost_usd"]) == (0, 0.0, 0.0)
    assert get(sidecar, "costs")["series"] == []
    assert get(sidecar, "users")["by_cost"] == []
    assert get(sidecar, "cache")["by_persona"] == []


def test_unreachable_ledger_is_a_503(make_sidecar: SidecarFactory) -> None:
    sidecar = make_sidecar(ADMIN_TOKENS=TOKENS, DATABASE_URL="postgres://x@127.0.0.1:9/none")
    answer = call(sidecar, f"{BASE}/overview")
    assert answer.status == 503
    assert answer.json()["error"]["code"] == "ledger_unavailable"
    assert get(sidecar, "circuits")["circuits"]  # what needs no database still answers


def test_overview_and_costs_show_every_token_kind(
    make_sidecar: SidecarFactory, stub: Stub, loop_thread: LoopThread, ledger_env: dict[str, str]
) -> None:
    """Cached reads and reasoning tokens (the stub's knobs) beside prompt and completion: paid
    on the miss, avoided on the hit, summed by the roll-ups the dashboard reads."""
    stub.fake.cached_tokens, stub.fake.reasoning_tokens = 3, 2
    sidecar = make_sidecar(ADMIN_TOKENS=TOKENS, **ledger_env)
    assert [ask(sidecar, u, SHORT) for u in ("u1", "u2")] == ["MISS", "HIT"]
    loop_thread.run(sidecar.runtime.ledger.flush())
    prompt = chat_prompt_tokens(messages(SHORT))
    body = get(sidecar, "overview")
    kinds = ("prompt_tokens", "completion_tokens", "cached_tokens", "cache_write_tokens",
             "reasoning_tokens")  # fmt: skip
    assert [body[k] for k in kinds] == [2 * prompt, 2 * (MAX_TOKENS + 2), 6, 0, 4]
    by_endpoint = get(sidecar, "costs?group_by=request_type")["series"]
    assert [p["group"] for p in by_endpoint] == ["chat.completions"]
    assert [by_endpoint[0][k] for k in kinds] == [2 * prompt, 2 * (MAX_TOKENS + 2), 6, 0, 4]
    price = sidecar.runtime.prices.price_for(MODEL)
    assert price is not None
    paid = (prompt - 3) * price.input + 3 * price.cached_rate + (MAX_TOKENS + 2) * price.output
    assert by_endpoint[0]["cost_usd"] == pytest.approx(paid / 1e6)
    assert by_endpoint[0]["saved_usd"] == pytest.approx(paid / 1e6)
