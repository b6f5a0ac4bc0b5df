"""What the ledger costs a cache hit: two fresh sidecars on the bench's Redis and fake upstream,
identical but for `LEDGER_ENABLED` (each with its own SQLite ledger), under the same wrk hit load
as bench/hits.py (`wrk -t1 -c32`). Runs alternate on, off, on, off so drift on a shared machine
hits both alike; the best run of each is compared. Target: ledger on within 10 % of off.

Checked, not assumed: no request reaches the upstream, and after a graceful stop the "on"
ledger holds a row for every request wrk counted while the "off" one holds none.
"""

from __future__ import annotations

import sqlite3
import sys
from contextlib import ExitStack
from pathlib import Path

from . import loadgen
from .parse import WrkResult
from .procs import HarnessError, answers_200, clean_env, free_port, spawn, wait_until
from .report import Check, Row, ms
from .stack import SETTING_NAMES, Bench

TARGET_RATIO = 0.9  # hit req/s with the ledger on, as a share of off
RUN_S = 4
ROUNDS = 2


def _start(stack: ExitStack, bench: Bench, name: str, enabled: bool) -> tuple[str, Path]:
    """A sidecar like the bench's own; returns its chat URL and its SQLite ledger file."""
    proxy_port, admin_port = free_port(), free_port()
    ledger = bench.workdir / f"{name}.db"
    env = clean_env(
        {
            "PROXY_HOST": "127.0.0.1",
            "PROXY_PORT": str(proxy_port),
            "ADMIN_HOST": "127.0.0.1",
            "ADMIN_PORT": str(admin_port),
            "REDIS_URL": bench.redis_url,
            "UPSTREAM_BASE_URL": bench.upstream,
            "LEDGER_PATH": str(ledger),
            "LEDGER_ENABLED": "true" if enabled else "false",
            "LOG_LEVEL": "WARNING",
        },
        drop=(*SETTING_NAMES, "LEDGER_ENABLED"),
    )
    log = bench.workdir / f"{name}.log"
    proc = spawn(stack, [sys.executable, "-m", "proxy", "serve"], log, env)
    admin = f"http://127.0.0.1:{admin_port}"
    wait_until(lambda: answers_200(admin + "/readyz"), what=name, proc=proc, log=log)
    return f"http://127.0.0.1:{proxy_port}/v1/chat/completions", ledger


def _wrk(bench: Bench, url: str, seconds: int) -> WrkResult:
    """bench/hits.py's hit load; loadgen.wrk refuses runs with errors or non-2xx answers."""
    return loadgen.wrk(url, bench.body, auth=bench.auth, threads=1, connections=32, seconds=seconds)


def _rows(ledger: Path) -> int:
    with sqlite3.connect(ledger) as conn:
        found: int = conn.execute("SELECT count(*) FROM ai_requests").fetchone()[0]
    return found


def ledger_overhead(bench: Bench) -> list[Row]:
    calls = bench.upstream_calls()
    best: dict[bool, WrkResult] = {}
    counted = {True: 0, False: 0}  # requests wrk saw answered, warm-up included
    with ExitStack() as stack:
        started = {
            on: _start(stack, bench, f"ledger-{'on' if on else 'off'}", on) for on in (True, False)
        }
        for on, (url, _) in started.items():
            counted[on] += _wrk(bench, url, 1).requests  # warm-up, not compared
        for _ in range(ROUNDS):
            for on, (url, _) in started.items():
                result = _wrk(bench, url, bench.seconds(RUN_S))
                counted[on] += result.requests
                if on not in best or result.requests_per_s > best[on].requests_per_s:
                    best[on] = result
    # The stack has stopped both sidecars with SIGTERM: each flushed its ledger.
    if bench.upstream_calls() != calls:
        raise HarnessError("requests of the ledger on/off hit runs reached the upstream")
    rows_on, rows_off = _rows(started[True][1]), _rows(started[False][1])
    if rows_on < counted[True] or rows_off != 0:
        raise HarnessError(
            f"ledger rows on/off: {rows_on}/{rows_off}, expected >= {counted[True]} / 0"
        )
    on, off = best[True], best[False]
    ratio = on.requests_per_s / off.requests_per_s
    p99 = f"p99 {ms(on.latency_us.p99 / 1000)} vs {ms(off.latency_us.p99 / 1000)} ms"
    return [
        Row(
            "hit req/s ledger on vs off (wrk -t1 -c32, best of 2)",
            f"{ratio:.0%} ({on.requests_per_s:,.0f} vs {off.requests_per_s:,.0f} req/s; {p99})",
            (Check("on/off", ratio * 100, TARGET_RATIO * 100, "%", at_least=True),),
            data={
                "on_requests_per_s": on.requests_per_s,
                "off_requests_per_s": off.requests_per_s,
                "ratio": ratio,
                "rows_on": rows_on,
                "wrk_requests_on": counted[True],
            },
        )
    ]
