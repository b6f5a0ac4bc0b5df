"""Hit servers compared in one run: the same wrk and hey hit loads on each, in alternating rounds.

Shared by bench/versus.py (two revisions' sidecars) and bench/stores.py (the stores and the
floors). Every server is started and warmed first; then each round runs, server after server,
the maximum hit rate (`wrk -t1 -c32`, with the server's CPU time) and then hit latency evenly
paced (`hey -c1 -q1000`), one server under load at a time while the others idle. The order
flips every round (forward, backward, ...) so drift on a shared machine hits all alike. No
request of a run may reach the fake upstream.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from . import loadgen
from .hits import all_hits
from .machine import process_cpu_s
from .parse import HeyResult, WrkResult
from .procs import REPO
from .stack import Bench, Floor, start_sidecar, warm_cache

ROUNDS = 3
RUN_S = 5  # per wrk run (a fifth with --quick, at least 1 s)
PACED_N, PACED_Q = 5000, 1000  # per hey run: 5 s evenly paced at 1000 req/s


def median_percentile(runs: Sequence[HeyResult], percentile: int) -> float:
    """The median over `runs` of one latency percentile, in ms."""
    if not runs:
        raise ValueError("no runs")
    return statistics.median(run.latency_s[percentile] * 1000 for run in runs)


def best_rate(runs: Sequence[WrkResult]) -> WrkResult:
    if not runs:
        raise ValueError("no runs")
    return max(runs, key=lambda run: run.requests_per_s)


def paired_ratio(runs: Sequence[WrkResult], *baselines: Sequence[WrkResult]) -> float:
    """The median over rounds of one round's rate over the baselines' (their mean, when more
    than one) in the same round: the machine's drift from round to round (seen here: +-10 %
    over a minute) falls out, and two baseline processes halve either one's own bias."""
    if not runs or not baselines or any(len(runs) != len(base) for base in baselines):
        raise ValueError("runs and baselines differ in rounds")
    return statistics.median(
        run.requests_per_s / statistics.fmean(base.requests_per_s for base in same)
        for run, *same in zip(runs, *baselines, strict=True)
    )


def median_rate(runs: Sequence[WrkResult]) -> float:
    """The median over `runs` of the request rate, in req/s."""
    if not runs:
        raise ValueError("no runs")
    return statistics.median(run.requests_per_s for run in runs)


@dataclass
class Contender:
    """One hit server and what its runs measured: `url` is its chat completions URL, `pid` the
    process whose CPU time is counted and `check` raises HarnessError once it has exited."""

    name: str
    url: str
    pid: int
    check: Callable[[], None]
    wrk: list[WrkResult] = field(default_factory=list)
    hey: list[HeyResult] = field(default_factory=list)
    cpu_s: float = 0.0  # the server's CPU time over its wrk runs

    @classmethod
    def of_sidecar(cls, name: str, side: Bench) -> Contender:
        return cls(name, side.sidecar + "/chat/completions", side.sidecar_pid, side.check_sidecar)

    @classmethod
    def of_floor(cls, name: str, floor: Floor) -> Contender:
        return cls(name, floor.url, floor.proc.pid, floor.check)

    def _wrk(self, bench: Bench, seconds: int) -> WrkResult:
        return loadgen.wrk(
            self.url, bench.body, auth=bench.auth, threads=1, connections=32, seconds=seconds
        )

    def warm_up(self, bench: Bench) -> None:
        """One second of the wrk load, not counted: 32 connections' worth of buffers."""
        all_hits(bench, lambda: self._wrk(bench, 1))

    def max_rate(self, bench: Bench) -> None:
        before = process_cpu_s(self.pid)
        self.wrk.append(all_hits(bench, lambda: self._wrk(bench, bench.seconds(RUN_S))))
        self.cpu_s += process_cpu_s(self.pid) - before

    def paced(self, bench: Bench) -> None:
        def run() -> HeyResult:
            headers = [f"Authorization: {bench.auth}"]
            n = bench.count(PACED_N)
            return loadgen.hey(self.url, bench.body, n=n, c=1, q=PACED_Q, headers=headers)

        self.hey.append(all_hits(bench, run))

    def cpu_us_per_hit(self) -> float:
        return self.cpu_s / max(sum(run.requests for run in self.wrk), 1) * 1e6

    def runs(self) -> dict[str, Any]:
        """Every run's figures, for the JSON file."""
        return {
            "requests_per_s": [run.requests_per_s for run in self.wrk],
            "paced_p50_ms": [run.p50_ms for run in self.hey],
            "paced_p99_ms": [run.p99_ms for run in self.hey],
            "cpu_us_per_request": self.cpu_us_per_hit(),
        }


@dataclass(frozen=True)
class Figures:
    """One server's medians over the rounds."""

    requests_per_s: float
    p50_ms: float
    p99_ms: float
    cpu_us: float

    @classmethod
    def of(cls, contender: Contender) -> Figures:
        return cls(
            median_rate(contender.wrk),
            median_percentile(contender.hey, 50),
            median_percentile(contender.hey, 99),
            contender.cpu_us_per_hit(),
        )


def start_warm_sidecar(
    stack: ExitStack,
    bench: Bench,
    name: str,
    *,
    redis_url: str | None,
    source: Path = REPO,
    settings: Mapping[str, str] | None = None,
) -> Bench:
    """A sidecar from `source` on the bench's fake upstream with its own directory `name`
    (log, ledger, answer) and the bench's scale, its cache warmed with the bench's request."""
    workdir = bench.workdir / name
    workdir.mkdir()
    side = start_sidecar(
        stack,
        workdir,
        redis_url=redis_url,
        upstream=bench.upstream,
        source=source,
        settings=settings,
    )
    side = replace(side, scale=bench.scale)
    warm_cache(side)
    return side


def side_by_side(
    bench: Bench, contenders: Sequence[Contender], seconds: int, cpus: set[int]
) -> None:
    """The maximum hit rate of every contender at the same moment: each under its own
    `wrk -t1 -c16` on `cpus`, the contenders sharing the CPU they were pinned to
    (bench/machine.py: `pin`), so each gets an even share of the same CPU over the same
    seconds and their rates compare as their costs per hit do. What alternating runs cannot
    give on a shared VM: two identical sidecars measured one after the other read x0.78 to
    x1.28 from one 6 s run to the next; side by side, x0.95 to x1.03."""
    before = [process_cpu_s(c.pid) for c in contenders]
    urls = [c.url for c in contenders]
    results = all_hits(
        bench,
        lambda: loadgen.wrk_together(
            urls, bench.body, auth=bench.auth, connections=16, seconds=seconds, cpus=cpus
        ),
    )
    for contender, result, cpu_s in zip(contenders, results, before, strict=True):
        contender.wrk.append(result)
        contender.cpu_s += process_cpu_s(contender.pid) - cpu_s


def run_rounds(bench: Bench, contenders: Sequence[Contender], rounds: int = ROUNDS) -> None:
    """Warms every contender up, then runs `rounds` alternating rounds (scaled by the bench)."""
    for contender in contenders:
        contender.warm_up(bench)
    for n in range(rounds):
        order = contenders if n % 2 == 0 else contenders[::-1]
        for contender in order:
            contender.max_rate(bench)
        for contender in order:
            contender.paced(bench)
        for contender in contenders:
            contender.check()
