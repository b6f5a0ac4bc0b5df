"""Issue 17's row `tracing_overhead`: what OpenTelemetry tracing costs a cache hit. Two fresh
sidecars on the bench's Redis and fake upstream, identical but for OTEL_EXPORTER_OTLP_ENDPOINT:
"on" exports every hit's spans (a server span and its cache-lookup child) over OTLP/HTTP to a
local receiver (bench/otlp_sink.py, a process of its own that discards them), "off" has the
variable empty, so its request path holds the no-op tracer. The same wrk and hey hit loads in
alternating rounds (bench/rounds.py); checked, not assumed: the receiver got exports from "on".
"""

from __future__ import annotations

import sys
from contextlib import ExitStack

from .procs import HarnessError, free_port, request, spawn, wait_until
from .report import Row
from .rounds import ROUNDS, Contender, Figures, run_rounds, start_warm_sidecar
from .stack import Bench

# No target: "off" against today's code is `--baseline REV` (bench/versus.py); this row gives
# what turning tracing on costs.


def _exports(url: str) -> tuple[int, int]:
    exports, size = request("GET", url).body.decode().split()
    return int(exports), int(size)


def tracing_overhead(bench: Bench) -> list[Row]:
    calls = bench.upstream_calls()
    with ExitStack() as stack:
        port = free_port()
        log = bench.workdir / "otlp-sink.log"
        sink = spawn(stack, [sys.executable, "-m", "bench.otlp_sink", str(port)], log)
        count_url = f"http://127.0.0.1:{port}/count"

        def up() -> bool:
            try:
                return request("GET", count_url, timeout_s=1.0).status == 200
            except OSError:
                return False

        wait_until(up, what="the OTLP sink", proc=sink, log=log)
        endpoints = {"on": f"http://127.0.0.1:{port}", "off": ""}
        contenders = [
            Contender.of_sidecar(
                name,
                start_warm_sidecar(
                    stack,
                    bench,
                    f"tracing-{name}",
                    redis_url=bench.redis_url,
                    settings={"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint},
                ),
            )
            for name, endpoint in endpoints.items()
        ]
        run_rounds(bench, contenders)
        exports, size = _exports(count_url)
    if bench.upstream_calls() != calls:
        raise HarnessError("requests of the tracing hit comparison reached the upstream")
    if exports == 0:
        raise HarnessError("the tracing sidecar exported no spans to the OTLP sink")
    on, off = contenders
    fig_on, fig_off = Figures.of(on), Figures.of(off)
    ratio = fig_on.requests_per_s / fig_off.requests_per_s
    return [
        Row(
            f"hit max req/s, tracing on (OTLP to a local sink) vs off (wrk -t1 -c32, "
            f"median of {ROUNDS})",
            f"{fig_on.requests_per_s:,.0f} vs {fig_off.requests_per_s:,.0f} req/s (x{ratio:.2f})",
            data={
                "requests_per_s": {c.name: [r.requests_per_s for r in c.wrk] for c in contenders}
            },
        ),
        Row(
            "  paced hit p50 / p99, tracing on vs off (hey -c1 -q1000)",
            f"{fig_on.p50_ms:.2f} / {fig_on.p99_ms:.2f} vs "
            f"{fig_off.p50_ms:.2f} / {fig_off.p99_ms:.2f} ms",
            data={"on": on.runs(), "off": off.runs()},
        ),
        Row(
            "  sidecar CPU per hit, tracing on vs off",
            f"{fig_on.cpu_us:.0f} vs {fig_off.cpu_us:.0f} us "
            f"({exports:,} exports, {size / 1e6:.1f} MB received)",
        ),
    ]
