"""`--baseline REV`: the cache-hit path of another revision against the working tree, in one run.

REV is checked out into a temporary detached `git worktree` (bench/worktree.py). Two fresh
sidecars start side by side, identical but for their source tree: one runs REV's `proxy`
package, the other this checkout's (uncommitted changes included), with the same interpreter,
settings, Redis and fake upstream as the bench's own sidecar. Both are warmed (the bench's
warm-up, then one uncounted second of wrk each); then each round runs bench/hits.py's loads on
both, the order flipping every round (REV first, then the working tree first, ...) so drift on
a shared machine hits both alike (bench/rounds.py, shared with bench/stores.py):

- maximum hit rate, `wrk -t1 -c32`: the best run of each side (other work only ever lowers a
  rate), with the sidecar's CPU time per hit over all its runs;
- hit latency evenly paced, `hey -c1 -q1000`: the median p50 and median p99 of each side.

Rows read `REV figure vs working-tree figure (xN)`, N = working tree / REV: above 1 is faster
for req/s, slower for ms and us. No request may reach the upstream once both are warm.
"""

from __future__ import annotations

import sys
from contextlib import ExitStack
from typing import Any

from . import worktree
from .procs import HarnessError
from .report import Row
from .rounds import ROUNDS, Contender, best_rate, median_percentile, run_rounds, start_warm_sidecar
from .stack import Bench

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


def hits_vs_baseline(bench: Bench) -> list[Row]:
    revision = bench.baseline
    if revision is None:
        raise HarnessError("no baseline revision: run with --baseline REV")
    with ExitStack() as stack:
        source = stack.enter_context(worktree.checkout(revision, bench.workdir))
        name = f"baseline-{revision.short}-sidecar"
        base_side = start_warm_sidecar(stack, bench, name, redis_url=bench.redis_url, source=source)
        print(f"bench: {revision.name}'s sidecar imports {base_side.proxy_file}", file=sys.stderr)
        tree_side = start_warm_sidecar(
            stack, bench, "working-tree-sidecar", redis_url=bench.redis_url
        )
        base = Contender.of_sidecar(revision.name, base_side)
        tree = Contender.of_sidecar(WORKING_TREE, tree_side)
        run_rounds(bench, [base, tree])
    runs = {
        "baseline": {"proxy_file": str(base_side.proxy_file), **base.runs()},
        "working_tree": {"proxy_file": str(tree_side.proxy_file), **tree.runs()},
    }
    return _rows(revision, base, tree, runs)


def pair(baseline: float, tree: float) -> dict[str, float | None]:
    """Both figures and their ratio, for the JSON file."""
    return {"baseline": baseline, "working_tree": tree, "ratio": ratio(baseline, tree)}


def _rows(
    revision: worktree.Revision, base: Contender, tree: Contender, runs: dict[str, Any]
) -> list[Row]:
    name = revision.name
    rates = best_rate(base.wrk).requests_per_s, best_rate(tree.wrk).requests_per_s
    cpu = base.cpu_us_per_hit(), tree.cpu_us_per_hit()
    p50 = median_percentile(base.hey, 50), median_percentile(tree.hey, 50)
    p99 = median_percentile(base.hey, 99), median_percentile(tree.hey, 99)
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
