"""The bench's parsers of hey and wrk output, fed outputs captured from real runs
(tests/data/bench), and the PASS/MISS verdicts built on them."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.parse import ParseError, parse_hey, parse_wrk
from bench.report import Check, Row, format_table

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
