"""The bench's parsers of hey and wrk output, fed outputs captured from real runs
(tests/data/bench), the PASS/MISS verdicts built on them, `--baseline`'s options, ratio rows
and import check, issue 22's store rows and targets, and the request bodies and cost estimate
of issue 19's rows."""

from __future__ import annotations

import os
from pathlib import Path

import msgspec
import pytest

from bench.bodies import BigBody, filler
from bench.overshoot import chat_body, estimate_usd
from bench.parse import ParseError, WrkResult, parse_hey, parse_wrk
from bench.procs import REPO, HarnessError
from bench.report import Check, Row, format_table
from bench.rounds import Figures, best_rate, median_percentile, median_rate, paired_ratio
from bench.run import parse_args
from bench.stores import (
    DICT_FLOOR,
    MEMORY,
    NEAR,
    REDIS,
    REDIS_FLOOR,
    reads_setting,
    store_rows,
)
from bench.versus import ratio, versus
from bench.worktree import proxy_imported_from
from proxy.ledger.pricing import ModelPrice, PriceTable

DATA = Path(__file__).parent / "data" / "bench"


def _sample(name: str) -> str:
    return (DATA / name).read_text(encoding="utf-8")


def test_hey_paced_hits() -> None:
    result = parse_hey(_sample("hey_hits_paced.txt"))
    assert result.total_s == pytest.approx(2.1715)
    assert result.requests_per_s == pytest.approx(921.0042)
    assert result.latency_s == {
        10: 0.0004,
        25: 0.0004,
        50: 0.0005,
        75: 0.0005,
        90: 0.0006,
        95: 0.0007,
        99: 0.0009,
    }
    assert result.p50_ms == pytest.approx(0.5)
    assert result.p99_ms == pytest.approx(0.9)
    assert result.statuses == {200: 2000}
    assert result.responses == 2000
    assert result.errors == 0


def test_hey_status_codes_other_than_200_are_counted() -> None:
    # 50 requests: hey prints a bogus "0% in 0.0000 secs" instead of its 99% line.
    with pytest.raises(ParseError, match="50%/99%"):
        parse_hey(_sample("hey_401_small_n.txt"))
    text = _sample("hey_401_small_n.txt").replace("  0% in 0.0000 secs", "  99% in 0.0040 secs")
    result = parse_hey(text)
    assert result.statuses == {401: 50}
    assert result.p99_ms == pytest.approx(4.0)


def test_hey_connection_errors_are_counted() -> None:
    result = parse_hey(_sample("hey_refused.txt"))
    assert result.errors == 20
    assert result.statuses == {}
    assert result.responses == 0
    assert result.latency_s == {}


@pytest.mark.parametrize(
    "text",
    ["", "Error: unknown flag -Z\n", _sample("hey_hits_paced.txt").replace("Requests/sec", "R/s")],
)
def test_hey_unknown_output_is_refused(text: str) -> None:
    with pytest.raises(ParseError):
        parse_hey(text)


def test_wrk_hits() -> None:
    result = parse_wrk(_sample("wrk_hits.txt"))
    assert result.requests == 26061
    assert result.duration_us == 5101081
    assert result.requests_per_s == pytest.approx(5108.9, abs=0.1)
    assert result.errors.total == 0
    assert (result.latency_us.p50, result.latency_us.p99) == (5772, 11528)
    assert result.latency_us.min <= result.latency_us.p50 <= result.latency_us.max


def test_wrk_status_errors_are_counted() -> None:
    result = parse_wrk(_sample("wrk_401.txt"))
    assert result.errors.status == result.requests == 9737
    assert result.errors.total == 9737


@pytest.mark.parametrize(
    "text",
    [
        "Running 1s test @ http://127.0.0.1:1/\nunable to connect\n",
        'BENCH_JSON {"requests": 3}\n',
        "BENCH_JSON not json\n",
    ],
)
def test_wrk_unknown_output_is_refused(text: str) -> None:
    with pytest.raises(ParseError):
        parse_wrk(text)


def test_verdicts_say_by_how_much_a_target_is_missed() -> None:
    latency = Row(
        "hit",
        "0.50 / 0.90 ms",
        (Check("p50", 0.5, 0.4, "ms"), Check("p99", 0.9, 1.0, "ms")),
    )
    assert latency.target == "p50 <= 0.4 ms, p99 <= 1 ms"
    assert latency.verdict == "MISS p50 +0.10 ms (+25%)"
    rate = Row("max", "9,500 req/s", (Check("", 9500, 9000, "req/s", at_least=True),))
    assert (rate.target, rate.verdict) == (">= 9,000 req/s", "PASS")
    slow = Row("max", "4,500 req/s", (Check("", 4500, 9000, "req/s", at_least=True),))
    assert slow.verdict == "MISS -4,500 req/s (-50%)"
    assert Row("rss", "50 MB").verdict == "-"
    assert Row("x", "", error="failed: boom").verdict == "ERROR"


def test_table_columns_line_up() -> None:
    rows = [Row("short", "1 ms"), Row("a much longer label", "22 ms", (Check("p", 1, 2, "ms"),))]
    lines = format_table(rows, ["a note"]).splitlines()
    assert lines[0].split() == ["measurement", "value", "target", "verdict"]
    verdict_at = lines[0].index("verdict")
    assert [line[verdict_at:] for line in lines[2:4]] == ["-", "PASS"]
    target_at = lines[0].index("target")
    assert [line[target_at:].split("  ")[0] for line in lines[2:4]] == ["-", "p <= 2 ms"]
    assert lines[-1] == "  a note"


def _names(argv: list[str]) -> list[str]:
    return [m.__name__ for m in parse_args(argv).chosen]


def test_the_baseline_comparison_runs_only_with_a_baseline() -> None:
    everything = _names([])
    assert "hits_vs_baseline" not in everything
    with_baseline = _names(["--baseline", "HEAD~5"])
    assert [name for name in with_baseline if name != "hits_vs_baseline"] == everything
    assert _names(["--baseline", "main", "--only", "hits_vs_baseline"]) == ["hits_vs_baseline"]
    # --only keeps the run order, whatever order it names the rows in.
    assert _names(["--baseline", "main", "--only", "hits_vs_baseline,hit_paced"]) == [
        "hit_paced",
        "hits_vs_baseline",
    ]
    assert parse_args(["--baseline", "v1.2"]).baseline == "v1.2"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--only", "hits_vs_baseline"], "needs --baseline REV"),
        (["--baseline", "main", "--only", "hit_paced"], "add it to --only"),
        (["--baseline", "main", "--only", "hits_vs_main"], "unknown measurement hits_vs_main"),
    ],
)
def test_baseline_options_that_cannot_work_are_refused(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        parse_args(argv)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_comparison_rows_give_both_figures_and_the_ratio() -> None:
    assert versus(9120, 9340, "req/s", ",.0f") == "9,120 vs 9,340 req/s (x1.02)"
    assert versus(0.5, 0.45, "ms", ".2f") == "0.50 vs 0.45 ms (x0.90)"
    assert versus(0, 3, "us", ".0f") == "0 vs 3 us (x-)"
    assert ratio(200, 100) == pytest.approx(0.5)
    assert ratio(0, 100) is None


def _hey(p50_ms: float, p99_ms: float) -> str:
    text = _sample("hey_hits_paced.txt")
    text = text.replace("50% in 0.0005 secs", f"50% in {p50_ms / 1000:.4f} secs")
    return text.replace("99% in 0.0009 secs", f"99% in {p99_ms / 1000:.4f} secs")


def test_paced_runs_give_the_median_of_each_percentile() -> None:
    runs = [parse_hey(_hey(p50, p99)) for p50, p99 in [(0.4, 3.0), (0.9, 0.8), (0.5, 1.0)]]
    assert median_percentile(runs, 50) == pytest.approx(0.5)
    assert median_percentile(runs, 99) == pytest.approx(1.0)


def test_max_rate_runs_give_the_best() -> None:
    slow = parse_wrk(_sample("wrk_hits.txt"))
    fast = msgspec.structs.replace(slow, requests=slow.requests * 2)
    assert best_rate([slow, fast, slow]) is fast
    assert median_rate([fast, slow, slow]) == pytest.approx(slow.requests_per_s)


def test_paired_rounds_give_the_median_of_each_rounds_ratio() -> None:
    """The machine slows down in the second round: each round's pair is compared, so the
    drift falls out (the medians taken apart would say 1.0)."""
    base = parse_wrk(_sample("wrk_hits.txt"))

    def at(scale: float) -> WrkResult:
        return msgspec.structs.replace(base, requests=int(base.requests * scale))

    runs = [at(0.95), at(0.475), at(0.95)]
    baseline = [at(1.0), at(0.5), at(0.5)]
    assert paired_ratio(runs, baseline) == pytest.approx(0.95, abs=1e-3)
    with pytest.raises(ValueError):
        paired_ratio(runs, baseline[:2])


def test_two_baselines_are_taken_at_their_mean_in_each_round() -> None:
    """One baseline process 10 % fast, the other 10 % slow: their mean is the comparison."""
    base = parse_wrk(_sample("wrk_hits.txt"))

    def at(scale: float) -> WrkResult:
        return msgspec.structs.replace(base, requests=int(base.requests * scale))

    runs = [at(0.95), at(0.475), at(0.95)]
    fast, slow = [at(1.1), at(0.55), at(1.1)], [at(0.9), at(0.45), at(0.9)]
    assert paired_ratio(runs, fast, slow) == pytest.approx(0.95, abs=1e-3)
    assert paired_ratio(runs, fast) == pytest.approx(0.864, abs=1e-3)
    with pytest.raises(ValueError):
        paired_ratio(runs, fast, slow[:2])
    with pytest.raises(ValueError):
        paired_ratio(runs)


def _store_rows(memory: Figures, near: Figures, *, near_read: bool = True) -> list[Row]:
    figures = {
        MEMORY: memory,
        REDIS: Figures(10_000, 0.3, 0.5, 90),
        NEAR: near,
        REDIS_FLOOR: Figures(12_000, 0.3, 0.5, 60),
        DICT_FLOOR: Figures(20_000, 0.2, 0.3, 40),
    }
    return store_rows(figures, {name: {} for name in figures}, near_read)


def test_store_rows_check_the_issue_22_targets() -> None:
    # Memory: 0.6x the dict floor, p99 0.3 ms above it, one hey step slower than Redis: passes.
    rows = _store_rows(Figures(12_000, 0.4, 0.6, 80), Figures(15_000, 0.2, 0.4, 70))
    verdicts = {row.label.strip(): row.verdict for row in rows}
    assert verdicts == {
        "hits by store, median of 3: memory store": "PASS",
        "Redis store (NEAR_CACHE_MB=0)": "-",
        "Redis + near cache (NEAR_CACHE_MB=64)": "PASS",
        "floor: aiohttp + redis-py GET": "-",
        "floor: aiohttp + dict": "-",
        "memory store vs Redis store": "PASS",
        "CPU per hit under wrk, memory / Redis / near": "-",
    }
    assert rows[0].value == "12,000 req/s = 0.60x dict floor; paced p50 0.40 / p99 0.60 ms"
    assert rows[-1].value == "80 / 90 / 70 us (floors: redis-py 60, dict 40 us)"
    # Below 0.6x, p99 0.4 ms over the floor's, two hey steps slower than Redis: missed.
    rows = _store_rows(Figures(9_000, 0.5, 0.7, 80), Figures(15_000, 0.2, 0.4, 70))
    assert rows[0].verdict == "MISS x dict floor -0.15 (-25%), p99 - floor's +0.10 ms (+33%)"
    assert rows[5].verdict.startswith("MISS x Redis -0.10 (-10%), p50 - Redis's +0.10 ms")
    assert "p99 - Redis's +0.10 ms" in rows[5].verdict


def test_a_near_cache_setting_the_tree_does_not_read_is_flagged(tmp_path: Path) -> None:
    figures = Figures(12_000, 0.3, 0.5, 80)
    near_row = _store_rows(figures, figures, near_read=False)[2]
    assert near_row.value.endswith("(NEAR_CACHE_MB unread by this tree: plain Redis)")
    assert near_row.data["near_cache_setting_read"] is False
    (tmp_path / "proxy" / "cache").mkdir(parents=True)
    (tmp_path / "proxy" / "__init__.py").write_text("")
    (tmp_path / "proxy" / "cache" / "near.py").write_text('NAME = "NEAR_CACHE_MB"\n')
    assert reads_setting(tmp_path / "proxy" / "__init__.py", "NEAR_CACHE_MB")
    assert not reads_setting(tmp_path / "proxy" / "__init__.py", "FAR_CACHE_MB")


def test_the_import_check_finds_which_tree_a_sidecar_would_run(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    assert proxy_imported_from(REPO, env) == REPO / "proxy" / "__init__.py"
    # A tree without a proxy package would run the installed one: refused.
    with pytest.raises(HarnessError, match="would import proxy from"):
        proxy_imported_from(tmp_path, dict(os.environ, PYTHONPATH=str(tmp_path)))
    # One with it shadows the installed package when it comes first on the path.
    (tmp_path / "proxy").mkdir()
    (tmp_path / "proxy" / "__init__.py").write_text("")
    assert (
        proxy_imported_from(tmp_path, dict(os.environ, PYTHONPATH=str(tmp_path)))
        == (tmp_path / "proxy" / "__init__.py").resolve()
    )


def test_issue_19_rows_run_alone_in_run_order() -> None:
    rows = "busy_refusal,big_bodies_rss,budget_overshoot"
    assert _names(["--only", rows]) == ["big_bodies_rss", "budget_overshoot", "busy_refusal"]
    everything = _names([])
    assert everything[-10:] == [
        "big_bodies_rss",
        "budget_overshoot",
        "busy_refusal",
        "gzip_bombs_rss",  # issue 23's, beside them
        "clients_four_vs_one",  # issue 21's, its own servers too
        "semantic_quality",  # issue 13's rows, before the peak RSS that covers them all
        "semantic_lookup_latency",
        "semantic_exact_hits",
        "tracing_overhead",  # issue 17's, its own sidecars and OTLP sink
        "peak_rss",
    ]


def test_a_big_body_is_one_json_message_of_exactly_its_size() -> None:
    size = 64 * 1024
    shared = filler(size)
    first, second = BigBody(0, shared, size), BigBody(29, shared, size)
    for body in (first, second):
        parts = [bytes(part) for part in body]
        assert len(body) == sum(map(len, parts)) == size  # the Content-Length sent
        decoded = msgspec.json.decode(b"".join(parts))
        assert [m["role"] for m in decoded["messages"]] == ["user"]
    # Distinct requests (no single-flight between them), sharing the filler's memory.
    assert first.head != second.head
    assert first.filler.obj is second.filler.obj is shared
    with pytest.raises(ValueError, match="too short"):
        BigBody(0, shared[:100], size)


def test_budget_burst_bodies_are_distinct_and_estimated_like_the_sidecar() -> None:
    bodies = {chat_body(n, "abcd1234") for n in (0, 7, 299, 999_999)}
    assert len(bodies) == 4
    assert len({len(body) for body in bodies}) == 1  # one estimate fits them all
    body = chat_body(0, "abcd1234")
    prices = PriceTable({"gpt-4o-mini": ModelPrice(input=0.15, output=0.60)})
    # ceil(len / 4 chars per token) prompt tokens at the input rate + max_tokens at the output's.
    expected = (-(-len(body) // 4) * 0.15 + 100 * 0.60) / 1e6
    assert estimate_usd(prices, body) == pytest.approx(expected)
