"""`make bench`: measure the sidecar with real load generators on loopback and print one table.

Usage (from the repository root): `python -m bench.run [--quick]`. Needs `hey`, `wrk` and
`redis-server` on PATH (`make bench` installs Debian's `wrk` and `hey`). It starts a private
redis-server, the fake upstream (`python -m proxy.fake_upstream`, no added latency) and the
sidecar (`python -m proxy serve`, same interpreter as this driver) on free loopback ports, stores
one ~600 B chat request's ~1.2 KB answer, then runs each function of `MEASUREMENTS` in order:
cache-hit latency with hey (evenly paced, then bursts), the maximum hit rate with wrk (plus the
sidecar's CPU time per hit and, as a same-run reference, bench/floor.py's minimal hit server
under the same load), the miss overhead (Cache-Control: no-store through the sidecar vs direct
to the fake upstream) and the sidecar's peak RSS. A footnote says how many cores other
processes used meanwhile: on a shared machine that moves every figure.

Each measurement takes the `Bench` context and returns table rows (`report.Row`), with targets
as `report.Check`s; add a new one by appending a function to `MEASUREMENTS`. A measurement that
raises `HarnessError` becomes an ERROR row and the others still run.

The table is printed and also written to bench/results/latest.json. The exit status is 0 when
everything was measured, even if a target was missed (this is a measurement, not a test), and
1 when the harness itself failed (a server did not start, no cache hit after warm-up, non-200
answers under load, requests of a hit run reaching the upstream). The whole run takes about
eight minutes (`hits_by_store` three of them, loading the 10M-row ledger of the `costs` row,
which `report_time` reads again, two); `--quick` scales every count and duration down (about
two minutes), and `--only hit_max_rate,costs` runs some rows alone.

Issue 14's `responses_hits` (bench/responses.py) runs a Responses API hit beside the same chat
hit on the bench's sidecar, in alternating rounds of the wrk and hey hit loads (about 70 s).

Issue 22's `hits_by_store` (bench/stores.py) compares the hit path across stores in one run:
fresh sidecars on the memory store, the Redis store and Redis with its near cache
(NEAR_CACHE_MB=64), and bench/floor.py's two minimal servers (aiohttp + redis-py GET, aiohttp +
an in-process dict), in three alternating rounds of the same wrk and hey hit loads: each one's
median max req/s, paced p50/p99 and ratio to the dict floor, and the sidecars' CPU per hit
(about 3 minutes, 45 s with `--quick`).

Issue 15's `workers_hits` (bench/workers.py): the hit path with `serve --workers 1` vs `2`, on
the memory store and on Redis, in alternating rounds of the same wrk and hey hit loads (about
2 minutes, 40 s with `--quick`). On 2 cores wrk takes one, which the row says.

Issue 19's rows start servers of their own and stop them as soon as they are done (on an
ExitStack of their own: the big-body servers alone hold ~1 GB): `big_bodies_rss`
(bench/bodies.py), `budget_overshoot` (bench/overshoot.py) and `busy_refusal` (bench/busy.py);
so does issue 23's `gzip_bombs_rss` (bench/bombs.py: peak RSS under 16 concurrent gzip bombs
and a cached hit's p99 meanwhile). Their counts are the issues' and not scaled by --quick; they
take about 30 s together.

Issue 21's `clients_four_vs_one` (bench/clients.py) sends a 200-request mixed workload through
the openai SDK (Python and Node), langchain-openai and litellm in turn, then through one client,
each run on a fresh fake upstream and sidecar, and compares their upstream calls (about 20 s).

Issue 13's rows (bench/semantic.py) measure the opt-in semantic cache with the real local model:
`semantic_quality` (held-out recall and wrong/false hits, against plain cosine),
`semantic_lookup_latency` (one lookup with 1 and 10,000 entries, the model's RSS) and
`semantic_exact_hits` (bench/semantic_hits.py: the exact hit path with SEMANTIC_CACHE on vs
off, in alternating rounds).

Issue 17's `tracing_overhead` (bench/tracing.py): the hit path with OpenTelemetry tracing on
(exporting over OTLP/HTTP to bench/otlp_sink.py, a local receiver that discards) and off, in
alternating rounds of the wrk and hey hit loads (about 70 s).

Issue 16's `miss_failover` (bench/failover.py): misses through a sidecar routing between two
fake upstreams of its own while the first fails 30 % of its calls with 503 (retries and a
fallback): the client-visible error rate and the p99 latency added over a healthy upstream
(about 20 s, 10 s with `--quick`).
Issue 15's `embeddings_burst` (bench/embeddings_burst.py): upstream calls per burst of 40
threaded SDK clients trickling in over 300 ms, and the latency batching adds to them and to a
lone request, the old fixed 5 ms window vs the adaptive one in the same run (about 40 s, 20 s
with `--quick`).
Issue 15's `cluster_hits` and `cluster_failover` (bench/cluster.py) start a Redis Cluster (3
primaries, 3 replicas) of their own: hit req/s and paced p50/p99 on the single node vs the
cluster in alternating rounds (target: >= 0.9x), then a primary SIGKILLed under hit and miss
load (5xx count, seconds until the hit is back); about 45 s with `--quick`.
Issue 15's `sentinel_failover` (bench/sentinel_failover.py): a Sentinel group and a sidecar of
their own under steady hits and misses, the primary killed: non-200 answers (none expected) and
the seconds from the promotion until hits resume (about 15 s).
Issue 16's `rate_limits_hits` (bench/rate_limits.py): the hit path with rate limits on (far
above the load: every hit checked and counted in Redis, in the same write as its GET) and off,
with a second "off" as the control: their maximum hit rates side by side on one CPU, three sets
of fresh processes, three rounds each; paced hey runs after each round (about 5 min).

`--baseline REV` adds `hits_vs_baseline` (bench/versus.py): REV's sidecar, run from a temporary
`git worktree`, against the working tree's, on the same hit loads in alternating rounds; with
`--only hits_vs_baseline` it runs alone (about 20 s with `--quick`, 75 s without).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

from . import (
    batching,
    bodies,
    bombs,
    busy,
    clients,
    cluster,
    coalescing,
    costs,
    embeddings_burst,
    failover,
    hits,
    ledger,
    ledger_overhead,
    loadgen,
    memory,
    misses,
    overshoot,
    rate_limits,
    report_time,
    responses,
    semantic,
    semantic_hits,
    sentinel_failover,
    stores,
    tracing,
    versus,
    workers,
    worktree,
)
from .machine import CpuMeter
from .procs import REPO, HarnessError, log_tail
from .report import Row, format_table, rows_json, write_json
from .stack import Bench, start_fake_upstream, start_redis, start_sidecar, warm_cache
from .worktree import Revision

Measurement = Callable[[Bench], list[Row]]

# In run order; peak RSS comes last so it covers every load before it.
MEASUREMENTS: tuple[Measurement, ...] = (
    hits.hit_paced,
    hits.hit_bursts,
    hits.hit_max_rate,
    responses.responses_hits,
    versus.hits_vs_baseline,
    stores.hits_by_store,
    workers.workers_hits,
    rate_limits.rate_limits_hits,
    cluster.cluster_hits,
    cluster.cluster_failover,
    sentinel_failover.sentinel_failover,
    misses.miss_overhead,
    batching.embeddings_batching,
    embeddings_burst.embeddings_burst,
    coalescing.coalescing_savings,
    ledger.ledger_ingest,
    ledger_overhead.ledger_overhead,
    costs.costs,
    report_time.report_time,
    failover.miss_failover,
    bodies.big_bodies_rss,
    overshoot.budget_overshoot,
    busy.busy_refusal,
    bombs.gzip_bombs_rss,
    clients.clients_four_vs_one,
    semantic.semantic_quality,
    semantic.semantic_lookup_latency,
    semantic_hits.semantic_exact_hits,
    tracing.tracing_overhead,
    memory.peak_rss,
)
# Run only with `--baseline REV` (by default, or when --only names them).
NEEDS_BASELINE = frozenset({versus.hits_vs_baseline.__name__})
RESULTS = REPO / "bench" / "results" / "latest.json"
NOTES = [
    "hey prints latencies in 0.1 ms steps; wrk's are in us. Load generators share the "
    f"{os.cpu_count()} cores with the sidecar.",
    "Targets: issue 2 / docs/design.md §9. Bursts: 20 requests every 20 ms, so p50 measures "
    "burst draining.",
]


def _unwind_on_signals() -> None:
    """SIGINT and SIGTERM unwind the driver (even where the shell started it with SIGINT
    ignored), so every started process is stopped; further signals are ignored meanwhile, so
    a second Ctrl-C cannot cut that clean-up short."""

    def handler(signum: int, frame: FrameType | None) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)
        raise KeyboardInterrupt

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, handler)


def _measure(bench: Bench, measurement: Measurement) -> list[Row]:
    label = measurement.__name__.replace("_", " ")
    started = time.monotonic()
    print(f"bench: {label} ...", file=sys.stderr, flush=True)
    try:
        rows = measurement(bench)
    except HarnessError as err:
        print(f"bench: {label} failed: {err}", file=sys.stderr, flush=True)
        return [Row(label, "", error=f"failed: {str(err).splitlines()[0]}")]
    print(f"bench: {label} done in {time.monotonic() - started:.1f} s", file=sys.stderr)
    return rows


def run_all(
    scale: float, measurements: Sequence[Measurement], baseline: Revision | None = None
) -> list[Row]:
    """Starts the servers, warms the cache and runs `measurements`; stops every process."""
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="sidecache-bench-")))
        print("bench: starting redis-server, fake upstream, sidecar ...", file=sys.stderr)
        redis_url = start_redis(stack, workdir)
        upstream = start_fake_upstream(stack, workdir)
        bench = start_sidecar(stack, workdir, redis_url=redis_url, upstream=upstream)
        bench.scale = scale
        bench.baseline = baseline
        warm_cache(bench)
        rows: list[Row] = []
        for measurement in measurements:
            rows += _measure(bench, measurement)
            bench.check_sidecar()
        logged = log_tail(bench.sidecar_log, 20)
        if logged:
            print(f"bench: the sidecar logged (last lines):\n{logged}", file=sys.stderr)
        return rows


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The options, with `chosen`: the measurements to run, in run order. Without --only,
    all of them but those needing a baseline, which come in with --baseline."""
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a fifth of the counts and durations")
    parser.add_argument("--json", type=Path, default=RESULTS, help=f"default {RESULTS}")
    names = [m.__name__ for m in MEASUREMENTS]
    parser.add_argument(
        "--only",
        type=lambda text: [name for name in text.split(",") if name],
        help=f"comma-separated measurements to run, of: {', '.join(names)}",
    )
    parser.add_argument(
        "--baseline",
        metavar="REV",
        help="also compare the hit path of git revision REV with the working tree's, in this "
        f"run ({', '.join(sorted(NEEDS_BASELINE))})",
    )
    args = parser.parse_args(argv)
    if args.only is None:
        args.only = [name for name in names if args.baseline or name not in NEEDS_BASELINE]
    unknown = sorted(set(args.only) - set(names))
    if unknown:
        parser.error(f"unknown measurement {', '.join(unknown)}; one of: {', '.join(names)}")
    compared = NEEDS_BASELINE & set(args.only)
    if compared and not args.baseline:
        parser.error(f"{', '.join(sorted(compared))} needs --baseline REV")
    if args.baseline and not compared:
        parser.error(
            f"--baseline compares in {', '.join(sorted(NEEDS_BASELINE))}: add it to --only"
        )
    args.chosen = [m for m in MEASUREMENTS if m.__name__ in args.only]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    baseline = None
    if args.baseline:
        try:
            baseline = worktree.resolve(args.baseline)
        except HarnessError as err:
            print(f"bench: --baseline: {err}", file=sys.stderr)
            return 2
    missing = loadgen.missing_tools()
    if missing:
        print(
            f"bench: not on PATH: {', '.join(missing)} (make bench installs wrk and hey; "
            "redis-server comes from Debian's redis-server package)",
            file=sys.stderr,
        )
        return 1
    _unwind_on_signals()
    started = datetime.now(UTC)
    meter = CpuMeter()
    scale = 0.2 if args.quick else 1.0
    try:
        rows = run_all(scale, args.chosen, baseline)
    except HarnessError as err:
        print(f"bench: harness failed: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench: interrupted; all servers stopped", file=sys.stderr)
        return 130
    foreign = meter.foreign_cores()
    notes = [*NOTES, meter.note(foreign)]
    if baseline is not None:
        notes.append(
            f"{baseline.name} = {baseline.short} ({baseline.subject}); xN = working tree / "
            f"{baseline.name}: above 1 is faster for req/s, slower for ms and us."
        )
    print(format_table(rows, notes))
    document: dict[str, Any] = {
        "started": started.isoformat(timespec="seconds"),
        "seconds": round((datetime.now(UTC) - started).total_seconds(), 1),
        "scale": scale,
        "host": {
            "cpus": os.cpu_count(),
            "machine": platform.machine(),
            "python": sys.version,
            "load_before": meter.load_before,
            "foreign_cores": round(foreign, 3),
        },
        "baseline": None if baseline is None else dataclasses.asdict(baseline),
        "ok": all(row.error is None for row in rows),
        "rows": rows_json(rows),
    }
    write_json(args.json, document)
    print(f"bench: wrote {args.json}", file=sys.stderr)
    return 0 if document["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
