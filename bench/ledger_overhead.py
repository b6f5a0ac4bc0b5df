"""What the ledger costs a cache hit: two fresh sidecars on the bench's Redis and fake upstream,
identical but for `LEDGER_ENABLED` (each with its own SQLite ledger), under the same wrk hit load
as bench/hits.py (`wrk -t1 -c32`). Runs alternate on, off, on, off so drift on a shared machine
hits both alike; the best run of each is compared. Target: ledger on within 10 % of off.

The SQLite ledger writes from a process of its own (proxy/ledger/sqlite_helper.py). It runs on
the same two cores as the sidecar, Redis and wrk, so its CPU counts against the "on" figure as it
would on a real host; the row also reports that CPU per request, next to the sidecar's own.

Checked, not assumed: no request reaches the upstream, and after a graceful stop the "on"
ledger holds a row for every request wrk counted while the "off" one holds none.
Standalone: `python -m bench.ledger_overhead [--quick]` (starts Redis, the fake upstream and a
sidecar to warm the cache first, as `make bench` does).
"""

from __future__ import annotations

import argparse
import contextlib
import sqlite3
import subprocess
import sys
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path

from . import loadgen
from .machine import process_cpu_s
from .parse import WrkResult
from .procs import HarnessError, answers_200, clean_env, free_port, spawn, wait_until
from .report import Check, Row, format_table, ms
from .stack import SETTING_NAMES, Bench

TARGET_RATIO = 0.9  # hit req/s with the ledger on, as a share of off
RUN_S = 4
ROUNDS = 3


class Sidecar:
    def __init__(self, url: str, ledger: Path, proc: subprocess.Popen[bytes]) -> None:
        self.url = url
        self.ledger = ledger
        self.proc = proc

    def cpu_s(self) -> tuple[float, float]:
        """CPU seconds used so far by the sidecar and by its child processes (the ledger's
        writer process) that are running now."""
        try:
            children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
        except OSError:
            children = ""
        helpers = 0.0
        for pid in children.split():
            with contextlib.suppress(OSError):  # exited meanwhile
                helpers += process_cpu_s(int(pid))
        return process_cpu_s(self.proc.pid), helpers


def _start(stack: ExitStack, bench: Bench, name: str, enabled: bool) -> Sidecar:
    """A sidecar like the bench's own, with its SQLite ledger file."""
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
    return Sidecar(f"http://127.0.0.1:{proxy_port}/v1/chat/completions", ledger, proc)


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
    cpu = {True: [0.0, 0.0], False: [0.0, 0.0]}  # sidecar, its writer process: over timed runs
    timed = {True: 0, False: 0}
    with ExitStack() as stack:
        started = {
            on: _start(stack, bench, f"ledger-{'on' if on else 'off'}", on) for on in (True, False)
        }
        for on, sidecar in started.items():
            counted[on] += _wrk(bench, sidecar.url, 1).requests  # warm-up, not compared
        for _ in range(ROUNDS):
            for on, sidecar in started.items():
                before = sidecar.cpu_s()
                result = _wrk(bench, sidecar.url, bench.seconds(RUN_S))
                after = sidecar.cpu_s()
                cpu[on] = [sum_ + b - a for sum_, a, b in zip(cpu[on], before, after, strict=True)]
                timed[on] += result.requests
                counted[on] += result.requests
                if on not in best or result.requests_per_s > best[on].requests_per_s:
                    best[on] = result
    # The stack has stopped both sidecars with SIGTERM: each flushed its ledger.
    if bench.upstream_calls() != calls:
        raise HarnessError("requests of the ledger on/off hit runs reached the upstream")
    rows_on, rows_off = _rows(started[True].ledger), _rows(started[False].ledger)
    if rows_on < counted[True] or rows_off != 0:
        raise HarnessError(
            f"ledger rows on/off: {rows_on}/{rows_off}, expected >= {counted[True]} / 0"
        )
    best_on, best_off = best[True], best[False]
    ratio = best_on.requests_per_s / best_off.requests_per_s
    p99 = f"p99 {ms(best_on.latency_us.p99 / 1000)} vs {ms(best_off.latency_us.p99 / 1000)} ms"
    us = {side: [s / max(timed[side], 1) * 1e6 for s in cpu[side]] for side in (True, False)}
    return [
        Row(
            f"hit req/s ledger on vs off (wrk -t1 -c32, best of {ROUNDS})",
            f"{ratio:.0%} ({best_on.requests_per_s:,.0f} vs {best_off.requests_per_s:,.0f} req/s; "
            f"{p99})",
            (Check("on/off", ratio * 100, TARGET_RATIO * 100, "%", at_least=True),),
            data={
                "on_requests_per_s": best_on.requests_per_s,
                "off_requests_per_s": best_off.requests_per_s,
                "ratio": ratio,
                "rows_on": rows_on,
                "wrk_requests_on": counted[True],
                "cpu_us_per_request_on": us[True][0],
                "writer_process_cpu_us_per_request_on": us[True][1],
                "cpu_us_per_request_off": us[False][0],
            },
        ),
        Row(
            "  CPU per hit, ledger on vs off",
            f"{us[True][0]:.0f} us + {us[True][1]:.0f} us in the ledger's writer process "
            f"vs {us[False][0]:.0f} us",
        ),
    ]


def main(argv: Sequence[str] | None = None) -> int:
    from .run import run_all  # the bench's stack: Redis, fake upstream, warmed cache

    parser = argparse.ArgumentParser(prog="python -m bench.ledger_overhead", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a fifth of the durations")
    args = parser.parse_args(argv)
    missing = loadgen.missing_tools()
    if missing:
        print(f"bench: not on PATH: {', '.join(missing)}", file=sys.stderr)
        return 1
    try:
        rows = run_all(0.2 if args.quick else 1.0, [ledger_overhead])
    except HarnessError as err:
        print(f"bench: {err}", file=sys.stderr)
        return 1
    print(format_table(rows, ["see bench/ledger_overhead.py"]))
    return 0 if all(row.error is None for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
