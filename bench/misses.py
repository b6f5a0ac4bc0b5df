"""Miss overhead: the same request through the sidecar (bypassing the cache) and direct to the
stub upstream, both evenly paced, in the same run."""

from __future__ import annotations

from . import loadgen
from .parse import HeyResult
from .procs import HarnessError
from .report import Check, Row, ms
from .stack import Bench

OVERHEAD_P50_MS = 1.0
_N, _C, _Q = 5000, 1, 500


def _paced(bench: Bench, base_url: str, n: int) -> HeyResult:
    """`n` real upstream calls (`Cache-Control: no-store` makes the sidecar bypass its cache)."""
    headers = [f"Authorization: {bench.auth}", "Cache-Control: no-store"]
    before = bench.upstream_calls()
    result = loadgen.hey(
        base_url + "/chat/completions", bench.body, n=n, c=_C, q=_Q, headers=headers
    )
    reached = bench.upstream_calls() - before
    if reached != n:
        raise HarnessError(f"{reached} of {n} no-store requests reached the upstream")
    return result


def miss_overhead(bench: Bench) -> list[Row]:
    n = bench.count(_N)
    direct = _paced(bench, bench.upstream, n)
    sidecar = _paced(bench, bench.sidecar, n)
    p50 = sidecar.p50_ms - direct.p50_ms
    p99 = sidecar.p99_ms - direct.p99_ms
    ratio50 = sidecar.p50_ms / direct.p50_ms
    ratio99 = sidecar.p99_ms / direct.p99_ms
    return [
        Row(
            "miss overhead p50/p99 (sidecar - direct, hey -c1 -q500)",
            f"{p50:+.2f} / {p99:+.2f} ms (x{ratio50:.2f} / x{ratio99:.2f})",
            (Check("p50", p50, OVERHEAD_P50_MS, "ms"),),
            data={"p50_ms": p50, "p99_ms": p99, "ratio_p50": ratio50, "ratio_p99": ratio99},
        ),
        Row(
            "  miss p50/p99 via sidecar, no-store",
            f"{ms(sidecar.p50_ms)} / {ms(sidecar.p99_ms)} ms",
            data={"hey": sidecar},
        ),
        Row(
            "  miss p50/p99 direct to stub",
            f"{ms(direct.p50_ms)} / {ms(direct.p99_ms)} ms",
            data={"hey": direct},
        ),
    ]
