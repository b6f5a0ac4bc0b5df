"""`--baseline REV`: the cache-hit path of another revision against the working tree, in one run.

REV is checked out into a temporary detached `git worktree` (bench/worktree.py). Two fresh
sidecars start side by side, identical but for their source tree: one runs REV's `proxy`
package, the other this checkout's (uncommitted changes included), with the same interpreter,
settings, Redis and fake upstream as the bench's own sidecar. Both are warmed (the bench's
warm-up, then one uncounted second of wrk each); then each round runs bench/hits.py's loads on
both, the order flipping every round (REV first, then the working tree first, ...) so drift on
a shared machine hits both alike:

- maximum hit rate, `wrk -t1 -c32`: the best run of each side (other work only ever lowers a
  rate), with the sidecar's CPU time per hit over all its runs;
- hit latency evenly paced, `hey -c1 -q1000`: the median p50 and median p99 of each side.

Rows read `REV figure vs working-tree figure (xN)`, N = working tree / REV: above 1 is faster
for req/s, slower for ms and us. No request may reach the upstream once both are warm.
"""

from __future__ import annotations

import statistics
import sys
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from . import loadgen, worktree
from .machine import process_cpu_s
from .parse import HeyResult, WrkResult
from .procs import REPO, HarnessError
from .report import Row
from .stack import Bench, start_sidecar, warm_cache

ROUNDS = 3
RUN_S = 5  # per wrk run (a fifth with --quick, at least 1 s)
PACED_N, PACED_Q = 5000, 1000  # per hey run: 5 s evenly paced at 1000 req/s
WORKING_TREE = "working tree"


def ratio(baseline: float, tree: float) -> float | None:
    """The working tree's figure over REV's; None when REV's figure is not positive."""
    return tree / baseline if baseline > 0 else None


def versus(baseline: float, tree: float, unit: str, spec: str) -> str:
    """`9,120 vs 9,340 req/s (x1.02)`: REV's figure, the working tree's and their ratio, with
    both figures formatted by the format `spec` (e.g. ",.0f" or ".2f")."""
    found = ratio(baseline, tree)
    factor = "x-" if found is None else f"x{found:.2f}"
    return f"{baseline:{spec}} vs {tree:{spec}} {unit} ({factor})"


def median_percentile(runs: Sequence[HeyResult], percentile: int) -> float:
    """The median over `runs` of one latency percentile, in ms."""
    if not runs:
        raise ValueError("no runs")
    return statistics.median(run.latency_s[percentile] * 1000 for run in runs)


def best_rate(runs: Sequence[WrkResult]) -> WrkResult:
    if not runs:
        raise ValueError("no runs")
    return max(runs, key=lambda run: run.requests_per_s)


@dataclass
class _Side:
    """One of the two sidecars and what its runs measured."""

    name: str
    bench: Bench
    wrk: list[WrkResult] = field(default_factory=list)
    hey: list[HeyResult] = field(default_factory=list)
    cpu_s: float = 0.0  # the sidecar's CPU time over its wrk runs

    def _wrk(self, seconds: int) -> WrkResult:
        url = self.bench.sidecar + "/chat/completions"
        return loadgen.wrk(
            url, self.bench.body, auth=self.bench.auth, threads=1, connections=32, seconds=seconds
        )

    def warm_up(self) -> None:
        """One second of the wrk load, not counted: 32 connections' worth of buffers."""
        self._wrk(1)

    def max_rate(self) -> None:
        before = process_cpu_s(self.bench.sidecar_pid)
        self.wrk.append(self._wrk(self.bench.seconds(RUN_S)))
        self.cpu_s += process_cpu_s(self.bench.sidecar_pid) - before

    def paced(self) -> None:
        self.hey.append(
            loadgen.hey(
                self.bench.sidecar + "/chat/completions",
                self.bench.body,
                n=self.bench.count(PACED_N),
                c=1,
                q=PACED_Q,
                headers=[f"Authorization: {self.bench.auth}"],
            )
        )

    def cpu_us_per_hit(self) -> float:
        return self.cpu_s / max(sum(run.requests for run in self.wrk), 1) * 1e6

    def runs(self) -> dict[str, Any]:
        """Every run's figures, and the source file the sidecar imported."""
        return {
            "proxy_file": str(self.bench.proxy_file),
            "requests_per_s": [run.requests_per_s for run in self.wrk],
            "paced_p50_ms": [run.p50_ms for run in self.hey],
            "paced_p99_ms": [run.p99_ms for run in self.hey],
            "cpu_us_per_request": self.cpu_us_per_hit(),
        }


def _start(stack: ExitStack, bench: Bench, name: str, source: Path) -> _Side:
    """A sidecar from `source` with its own directory (log, ledger, answer), warmed."""
    workdir = bench.workdir / name
    workdir.mkdir()
    side = start_sidecar(
        stack, workdir, redis_url=bench.redis_url, upstream=bench.upstream, source=source
    )
    side = replace(side, scale=bench.scale)
    warm_cache(side)
    return _Side(name, side)


def _run_rounds(bench: Bench, sides: list[_Side]) -> None:
    calls = bench.upstream_calls()
    for side in sides:
        side.warm_up()
    for n in range(ROUNDS):
        order = sides if n % 2 == 0 else sides[::-1]
        for side in order:
            side.max_rate()
        for side in order:
            side.paced()
        for side in sides:
            side.bench.check_sidecar()
    went_up = bench.upstream_calls() - calls
    if went_up:
        raise HarnessError(f"{went_up} requests of the baseline comparison reached the upstream")


def hits_vs_baseline(bench: Bench) -> list[Row]:
    revision = bench.baseline
    if revision is None:
        raise HarnessError("no baseline revision: run with --baseline REV")
    with ExitStack() as stack:
        source = stack.enter_context(worktree.checkout(revision, bench.workdir))
        base = _start(stack, bench, f"baseline-{revision.short}-sidecar", source)
        print(f"bench: {revision.name}'s sidecar imports {base.bench.proxy_file}", file=sys.stderr)
        tree = _start(stack, bench, "working-tree-sidecar", REPO)
        _run_rounds(bench, [base, tree])
    return _rows(revision, base, tree)


def pair(baseline: float, tree: float) -> dict[str, float | None]:
    """Both figures and their ratio, for the JSON file."""
    return {"baseline": baseline, "working_tree": tree, "ratio": ratio(baseline, tree)}


def _rows(revision: worktree.Revision, base: _Side, tree: _Side) -> list[Row]:
    name = revision.name
    rates = best_rate(base.wrk).requests_per_s, best_rate(tree.wrk).requests_per_s
    cpu = base.cpu_us_per_hit(), tree.cpu_us_per_hit()
    p50 = median_percentile(base.hey, 50), median_percentile(tree.hey, 50)
    p99 = median_percentile(base.hey, 99), median_percentile(tree.hey, 99)
    runs = {"baseline": base.runs(), "working_tree": tree.runs()}
    return [
        Row(
            f"hit max req/s, {name} vs {WORKING_TREE} (wrk -t1 -c32, best of {ROUNDS})",
            versus(*rates, "req/s", ",.0f"),
            data={
                "baseline_rev": name,
                "baseline_commit": revision.commit,
                "requests_per_s": pair(*rates),
                "runs": runs,
            },
        ),
        Row(
            f"  sidecar CPU per hit under wrk, {name} vs {WORKING_TREE}",
            versus(*cpu, "us", ".0f"),
            data={"cpu_us_per_request": pair(*cpu)},
        ),
        Row(
            f"hit p50/p99 @1000 rps paced, {name} vs {WORKING_TREE} (median of {ROUNDS})",
            f"p50 {versus(*p50, 'ms', '.2f')}, p99 {versus(*p99, 'ms', '.2f')}",
            data={"p50_ms": pair(*p50), "p99_ms": pair(*p99)},
        ),
    ]
