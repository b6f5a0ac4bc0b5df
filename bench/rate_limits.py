"""Issue 16's row `rate_limits_hits`: what rate limits cost a cache hit. Two fresh sidecars on
the bench's Redis and fake upstream, identical but for RATE_TENANT_RPM/RATE_TENANT_TPM: "on"
has limits far above the load (every hit is checked and counted in Redis, none refused), "off"
has none. The same wrk and hey hit loads in alternating rounds (bench/rounds.py); checked, not
assumed: "on" answered with the x-ratelimit headers and refused nothing.
"""

from __future__ import annotations

from contextlib import ExitStack

from .procs import HarnessError, request
from .report import Check, Row
from .rounds import (
    Contender,
    median_percentile,
    median_rate,
    paired_ratio,
    run_rounds,
    start_warm_sidecar,
)
from .stack import Bench

# Issue 16: hits with limits on at most 5 % slower than with limits off.
MIN_RATIO = 0.95
# Far above what one process answers in a minute: checked and counted, never refused.
HIGH_LIMIT = "1000000000"
RATE_ROUNDS = 9


def _limited(side: Bench) -> bool:
    """Whether `side` answers a hit with the requests trio (its limits are on)."""
    headers = {"Authorization": side.auth, "Content-Type": "application/json"}
    url = side.sidecar + "/chat/completions"
    answer = request("POST", url, body=side.body.read_bytes(), headers=headers)
    return answer.status == 200 and "x-ratelimit-limit-requests" in answer.headers


def rate_limits_hits(bench: Bench) -> list[Row]:
    calls = bench.upstream_calls()
    limits = {
        "on": {"RATE_TENANT_RPM": HIGH_LIMIT, "RATE_TENANT_TPM": HIGH_LIMIT},
        "off": {"RATE_TENANT_RPM": "0", "RATE_TENANT_TPM": "0"},
    }
    with ExitStack() as stack:
        sides = {
            name: start_warm_sidecar(
                stack, bench, f"rate-{name}", redis_url=bench.redis_url, settings=settings
            )
            for name, settings in limits.items()
        }
        contenders = [Contender.of_sidecar(name, side) for name, side in sides.items()]
        on, off = contenders
        run_rounds(bench, contenders, RATE_ROUNDS)
        if not _limited(sides["on"]) or _limited(sides["off"]):
            raise HarnessError("only the rate-limited sidecar's hits carry x-ratelimit headers")
    if bench.upstream_calls() != calls:
        raise HarnessError("requests of the rate-limit hit comparison reached the upstream")
    rate = {c.name: median_rate(c.wrk) for c in contenders}
    p50 = {c.name: median_percentile(c.hey, 50) for c in contenders}
    p99 = {c.name: median_percentile(c.hey, 99) for c in contenders}
    ratio = paired_ratio(on.wrk, off.wrk)
    return [
        Row(
            f"hit max req/s, rate limits on vs off (wrk -t1 -c32, {RATE_ROUNDS} rounds; ratio: "
            "median of the rounds' on/off)",
            f"{rate['on']:,.0f} vs {rate['off']:,.0f} req/s (x{ratio:.3f})",
            (Check("on/off", ratio, MIN_RATIO, "", at_least=True),),
            data={
                "requests_per_s": {c.name: [r.requests_per_s for r in c.wrk] for c in contenders}
            },
        ),
        Row(
            "  paced hit p50 / p99, rate limits on vs off (hey -c1 -q1000)",
            f"{p50['on']:.2f} / {p99['on']:.2f} vs {p50['off']:.2f} / {p99['off']:.2f} ms",
            data={"on": on.runs(), "off": off.runs()},
        ),
        Row(
            "  sidecar CPU per hit, rate limits on vs off",
            f"{on.cpu_us_per_hit():.0f} vs {off.cpu_us_per_hit():.0f} us",
        ),
    ]
