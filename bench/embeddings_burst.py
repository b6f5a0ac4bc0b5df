"""Issue 15's embeddings burst: upstream calls per burst of 40 threaded SDK clients, and the
latency the batching window adds, fixed window vs adaptive in the same run.

A burst is tests/fixtures/burst.py: 40 threads in a process of their own, each with its own
official SDK client (so its own connection), sending one distinct single-input embeddings
request each, spread evenly over `SPREAD_S` (the few hundred milliseconds the issue saw a burst
trickle in over). Two sidecars, each on its own memory cache, run side by side in front of
one fake upstream (`LATENCY_MS` per call, no concurrency limit) and take turns, in rounds
whose order alternates: per round and sidecar, `LONES_PER_ROUND` lone requests then one burst.

- fixed: `AI_BATCH_GAP_MS` = `AI_BATCH_MAX_WAIT_MS` = `AI_BATCH_WAIT_MS` = 5, which is the old
  fixed 5 ms window exactly (no arrival extends it);
- adaptive: the defaults (5 ms on an idle lane, 50 ms gap, 200 ms cap).

Per sidecar: upstream calls per burst (median over the bursts), every burst request's latency
(p50/p99, client-side, the whole answer read) and a lone request's (p50 over lone requests
sent `LONE_SPACING_S` apart, so every one finds its lane idle). Added latency = burst p50/p99
minus the lone p50. Standalone: `python -m bench.embeddings_burst [--quick]`.
"""

from __future__ import annotations

import statistics
import sys
import time
from contextlib import ExitStack
from pathlib import Path

from proxy.settings import BatchSettings
from tests.fixtures.burst import Burst, Outcome, burst

from .batching import embedding_calls, start_batching_sidecar
from .procs import HarnessError
from .report import Check, Row, in_temp_dir, ms, run_standalone
from .stack import AUTH, Bench, start_fake_upstream

CLIENTS, SIZE = 40, 10
SPREAD_S = 0.3
LATENCY_MS = 50
LONE_SPACING_S = 0.3  # longer than the adaptive cap: every lone request finds its lane idle
ROUNDS, LONES_PER_ROUND = 7, 4  # a burst and 4 lone requests per sidecar per round
TARGET_CALLS = 6.0  # 4 is the floor at AI_BATCH_SIZE=10; the first request may go alone
TARGET_LONE_RATIO = 1.5  # a lone request's latency, adaptive / fixed
FIXED = {"AI_BATCH_SIZE": str(SIZE), **dict.fromkeys(
    ("AI_BATCH_WAIT_MS", "AI_BATCH_GAP_MS", "AI_BATCH_MAX_WAIT_MS"), "5"
)}  # fmt: skip
ADAPTIVE = {"AI_BATCH_SIZE": str(SIZE)}
DEFAULTS = BatchSettings()


class _Side:
    """One sidecar's figures."""

    def __init__(self, calls: list[int], burst_ms: list[float], lone_ms: list[float]) -> None:
        self.calls = statistics.median(calls)
        self.all_calls = calls
        cuts = statistics.quantiles(burst_ms, n=100, method="inclusive")
        self.p50, self.p99 = statistics.median(burst_ms), cuts[98]
        self.lone = statistics.median(lone_ms)

    def text(self) -> str:
        return (
            f"{self.calls:g} calls/burst ({', '.join(map(str, self.all_calls))}); "
            f"burst p50 {ms(self.p50)} / p99 {ms(self.p99)} ms = lone {ms(self.lone)} "
            f"{self.p50 - self.lone:+.2f} / {self.p99 - self.lone:+.2f} ms"
        )

    def data(self) -> dict[str, object]:
        return {
            "calls_per_burst": self.calls,
            "calls": self.all_calls,
            "burst_p50_ms": self.p50,
            "burst_p99_ms": self.p99,
            "lone_p50_ms": self.lone,
        }


def _latencies(outcomes: list[Outcome]) -> list[float]:
    bad = [o.status for o in outcomes if o.status != 200]
    if bad:
        raise HarnessError(f"burst answers not 200: {bad[:5]}")
    return [(o.done - o.sent) * 1000 for o in outcomes]


def _round(
    upstream: str, url: str, run: str, calls: list[int], burst_ms: list[float]
) -> list[float]:
    """One burst on the sidecar at `url` (its calls and latencies appended), after
    `LONES_PER_ROUND` lone requests (their latencies returned)."""
    api_key = AUTH.removeprefix("Bearer ")
    lones = [f"{run} lone {n}" for n in range(LONES_PER_ROUND)]
    lone_ms = _latencies(burst(Burst(url, api_key, lones, LONE_SPACING_S)))
    time.sleep(LONE_SPACING_S)  # the lane idle before the burst
    before, _ = embedding_calls(upstream)
    inputs = [f"{run} burst item {n}" for n in range(CLIENTS)]
    burst_ms += _latencies(burst(Burst(url, api_key, inputs, SPREAD_S / CLIENTS)))
    calls.append(embedding_calls(upstream)[0] - before)
    return lone_ms


def measure(workdir: Path, scale: float) -> list[Row]:
    """Both sidecars run side by side and take turns, the order swapped every round, so a
    busy spell on the shared machine falls on both alike."""
    rounds = max(3, round(ROUNDS * scale))
    names = ("fixed", "adaptive")
    calls: dict[str, list[int]] = {name: [] for name in names}
    burst_ms: dict[str, list[float]] = {name: [] for name in names}
    lone_ms: dict[str, list[float]] = {name: [] for name in names}
    with ExitStack() as stack:
        upstream = start_fake_upstream(
            stack, workdir, latency_ms=LATENCY_MS, name="fake-upstream-burst"
        )
        urls = {
            name: start_batching_sidecar(stack, workdir, f"sidecar-{name}", upstream, env)
            for name, env in zip(names, (FIXED, ADAPTIVE), strict=True)
        }
        for number in range(rounds):
            for name in names if number % 2 == 0 else reversed(names):
                run = f"{name}-{time.time_ns()}"
                lone_ms[name] += _round(upstream, urls[name], run, calls[name], burst_ms[name])
    sides = {name: _Side(calls[name], burst_ms[name], lone_ms[name]) for name in names}
    fixed, adaptive = sides["fixed"], sides["adaptive"]
    ratio = adaptive.lone / fixed.lone
    return [
        Row(
            f"embeddings_burst: upstream calls per {CLIENTS}-client threaded burst over "
            f"{SPREAD_S * 1000:.0f} ms (median of {rounds}; AI_BATCH_SIZE={SIZE}, stub "
            f"{LATENCY_MS} ms), adaptive vs fixed 5 ms window",
            f"{adaptive.calls:g} vs {fixed.calls:g}",
            (Check("calls", adaptive.calls, TARGET_CALLS, " calls"),),
            data={"adaptive": adaptive.data(), "fixed": fixed.data()},
        ),
        Row(
            "  lone request p50, adaptive vs fixed (its lane idle: the same 5 ms wait)",
            f"{ms(adaptive.lone)} vs {ms(fixed.lone)} ms = x{ratio:.2f}",
            (Check("ratio", ratio, TARGET_LONE_RATIO, "x"),),
            data={"ratio": ratio},
        ),
        Row(
            f"  adaptive (defaults: wait {DEFAULTS.wait_ms:g}, gap {DEFAULTS.gap_ms:g}, "
            f"cap {DEFAULTS.max_wait_ms:g} ms)",
            adaptive.text(),
        ),
        Row("  fixed (wait = gap = cap = 5 ms: the old window)", fixed.text()),
    ]


def embeddings_burst(bench: Bench) -> list[Row]:
    return measure(bench.workdir, bench.scale)


def main() -> int:
    return run_standalone(
        "python -m bench.embeddings_burst", __doc__, in_temp_dir("sidecache-burst-", measure)
    )


if __name__ == "__main__":
    sys.exit(main())
