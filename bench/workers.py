"""Issue 15's row `workers_hits`: the cache-hit path with `serve --workers 1` vs `--workers 2`, on
the memory store and on the bench's Redis, in one run.

Four fresh sidecars share the bench's private Redis and fake upstream and run the same loads in
alternating rounds (bench/rounds.py), one under load while the others idle: max hit rate
(`wrk -t1 -c32`: its 32 connections are spread over the workers by SO_REUSEPORT) and paced
latency (`hey -c1 -q1000`: one connection, so one worker answers it), each figure the median of
the rounds. A two-worker sidecar is primed until every worker has served the bench's request
twice, so each holds the entry (the memory store is per worker) and no timed request misses.

On this machine's 2 cores wrk takes one, so a second worker mostly competes with the load
generator and the other worker for the same cores: the row measures what the supervisor, the
mesh and SO_REUSEPORT cost and allow here, not the scaling a host with spare cores would see.
No targets: the issue asks for the figures.
"""

from __future__ import annotations

import time
from contextlib import ExitStack
from dataclasses import replace
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from .procs import HarnessError, request
from .report import Row, ms
from .rounds import ROUNDS, Contender, median_percentile, median_rate, run_rounds
from .rounds import start_warm_sidecar as start_one
from .stack import Bench, start_sidecar

PRIME_MAX_REQUESTS = 400
READY_TIMEOUT_S = 30.0
NOTE = "2 cores, wrk takes one: the workers share the other with each other"


def _shares(side: Bench) -> dict[str, float]:
    """The merged /metrics: workers covered ("workers") and each worker's requests."""
    text = request("GET", side.admin + "/metrics").body.decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "sidecache_workers":
                out["workers"] = sample.value
            elif sample.name == "sidecache_worker_requests_total":
                out[sample.labels["worker"]] = sample.value
    return out


def _prime(side: Bench, workers: int) -> None:
    """Requests on new connections until every worker has answered the bench's twice."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while _shares(side).get("workers") != workers:
        side.check_sidecar()
        if time.monotonic() > deadline:
            raise HarnessError(f"not all {workers} workers served /metrics in time")
        time.sleep(0.2)
    url = side.sidecar + "/chat/completions"
    headers = {"Authorization": side.auth, "Content-Type": "application/json"}
    for _ in range(PRIME_MAX_REQUESTS):
        answer = request("POST", url, body=side.body.read_bytes(), headers=headers)
        if answer.status != 200:
            raise HarnessError(f"priming request got {answer.status}: {answer.body[:300]!r}")
        shares = _shares(side)
        if all(shares.get(str(i), 0) >= 2 for i in range(workers)):
            return
    raise HarnessError(f"{PRIME_MAX_REQUESTS} requests did not reach all {workers} workers")


def _start(stack: ExitStack, bench: Bench, name: str, redis: bool, workers: int) -> Bench:
    redis_url = bench.redis_url if redis else None
    if workers == 1:
        return start_one(stack, bench, name, redis_url=redis_url)
    workdir = bench.workdir / name
    workdir.mkdir()
    settings = {"WORKERS": str(workers)}
    side = start_sidecar(
        stack, workdir, redis_url=redis_url, upstream=bench.upstream, settings=settings
    )
    side = replace(side, scale=bench.scale)
    _prime(side, workers)
    return side


def workers_hits(bench: Bench) -> list[Row]:
    if not bench.redis_url:
        raise HarnessError("workers_hits needs the bench's Redis")
    setups = [(store, n) for store in ("memory", "Redis") for n in (1, 2)]
    with ExitStack() as stack:
        contenders = [
            Contender.of_sidecar(
                f"{store}, {n} worker{'s' * (n > 1)}",
                _start(stack, bench, f"workers-{store.lower()}-{n}", store == "Redis", n),
            )
            for store, n in setups
        ]
        run_rounds(bench, contenders)
    figures = {
        c.name: (median_rate(c.wrk), median_percentile(c.hey, 50), median_percentile(c.hey, 99))
        for c in contenders
    }
    rows = []
    for n, contender in enumerate(contenders):
        rate, p50, p99 = figures[contender.name]
        label = f"workers hits, median of {ROUNDS}: {contender.name}" if n == 0 else None
        data: dict[str, Any] = {
            "requests_per_s": rate,
            "paced_p50_ms": p50,
            "paced_p99_ms": p99,
            "runs": {
                "requests_per_s": [run.requests_per_s for run in contender.wrk],
                "paced_p50_ms": [run.p50_ms for run in contender.hey],
                "paced_p99_ms": [run.p99_ms for run in contender.hey],
            },
        }
        value = f"{rate:,.0f} req/s; paced p50 {ms(p50)} / p99 {ms(p99)} ms"
        rows.append(Row(label or f"  {contender.name}", value, data=data))
    for store in ("memory", "Redis"):
        one, two = figures[f"{store}, 1 worker"], figures[f"{store}, 2 workers"]
        times = two[0] / one[0]
        data = {"requests_per_s_ratio": times, "note": NOTE}
        rows.append(Row(f"  {store}: 2 workers vs 1", f"x{times:.2f} req/s ({NOTE})", data=data))
    return rows
