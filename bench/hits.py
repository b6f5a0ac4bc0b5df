"""Cache-hit measurements: latency evenly paced and in bursts (hey), maximum rate (wrk)."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from typing import TypeVar

from . import loadgen
from .machine import process_cpu_s
from .parse import HeyResult, WrkResult
from .procs import HarnessError
from .report import Check, Row, ms
from .stack import Bench, start_floor

T = TypeVar("T")

PACED_P50_MS = 0.4
PACED_P99_MS = 1.0
MAX_RATE_PER_S = 9000.0


def all_hits(bench: Bench, run: Callable[[], T]) -> T:
    """Runs `run` and fails the measurement if any of its requests reached the upstream."""
    before = bench.upstream_calls()
    result = run()
    went_up = bench.upstream_calls() - before
    if went_up:
        raise HarnessError(f"{went_up} requests of a cache-hit run reached the upstream")
    return result


def _hey_hits(bench: Bench, *, n: int, c: int, q: int) -> HeyResult:
    url = bench.sidecar + "/chat/completions"
    headers = [f"Authorization: {bench.auth}"]
    return all_hits(
        bench, lambda: loadgen.hey(url, bench.body, n=bench.count(n), c=c, q=q, headers=headers)
    )


def hit_paced(bench: Bench) -> list[Row]:
    result = _hey_hits(bench, n=10_000, c=1, q=1000)
    return [
        Row(
            "hit p50/p99 @1000 rps paced (hey -c1 -q1000)",
            f"{ms(result.p50_ms)} / {ms(result.p99_ms)} ms ({result.requests_per_s:,.0f} req/s)",
            (
                Check("p50", result.p50_ms, PACED_P50_MS, "ms"),
                Check("p99", result.p99_ms, PACED_P99_MS, "ms"),
            ),
            data={"hey": result},
        )
    ]


def hit_bursts(bench: Bench) -> list[Row]:
    result = _hey_hits(bench, n=10_000, c=20, q=50)
    return [
        Row(
            "hit p50/p99 bursts (hey -c20 -q50)",
            f"{ms(result.p50_ms)} / {ms(result.p99_ms)} ms ({result.requests_per_s:,.0f} req/s)",
            data={"hey": result},
        )
    ]


def _wrk(bench: Bench, url: str) -> WrkResult:
    return loadgen.wrk(
        url, bench.body, auth=bench.auth, threads=1, connections=32, seconds=bench.seconds(10)
    )


def _rate_text(result: WrkResult) -> str:
    lat = result.latency_us
    return (
        f"{result.requests_per_s:,.0f} req/s "
        f"(p50 {ms(lat.p50 / 1000)} / p99 {ms(lat.p99 / 1000)} ms)"
    )


def hit_max_rate(bench: Bench) -> list[Row]:
    """The sidecar under wrk, then the minimal hit server (bench/floor.py) under the same load,
    so the ratio holds however fast the machine is today."""
    cpu_before = process_cpu_s(bench.sidecar_pid)
    result = all_hits(bench, lambda: _wrk(bench, bench.sidecar + "/chat/completions"))
    cpu_us = (process_cpu_s(bench.sidecar_pid) - cpu_before) / result.requests * 1e6
    with ExitStack() as stack:
        floor = _wrk(bench, start_floor(stack, bench))
    ratio = result.requests_per_s / floor.requests_per_s
    return [
        Row(
            "hit max req/s (wrk -t1 -c32)",
            _rate_text(result),
            (Check("", result.requests_per_s, MAX_RATE_PER_S, "req/s", at_least=True),),
            data={"wrk": result, "requests_per_s": result.requests_per_s},
        ),
        Row(
            "  sidecar CPU per hit under wrk",
            f"{cpu_us:.0f} us of CPU (user + system) per request",
            data={"cpu_us_per_request": cpu_us},
        ),
        Row(
            "  floor: minimal hit server (bench/floor.py), same wrk",
            f"{_rate_text(floor)}; sidecar = {ratio:.0%} of it",
            data={"wrk": floor, "requests_per_s": floor.requests_per_s, "sidecar_ratio": ratio},
        ),
    ]
