"""Issue 16's row `rate_limits_hits`: what rate limits cost a cache hit. Three fresh sidecars on
the bench's Redis and fake upstream, identical but for RATE_TENANT_RPM/RATE_TENANT_TPM: "on"
has limits far above the load (every hit is checked and counted in Redis, none refused), "off"
and "control" have none. Their maximum hit rates are measured side by side, pinned to one CPU
with the load generators on the other (bench/rounds.py: `side_by_side`), since this machine's
speed drifts far more than 5 % between runs; "on" is compared with the mean of the two others
in each round, and "control" against "off" is what the method reads for no difference at all.
Three sets of fresh processes, three rounds each. Paced latency runs in alternating order after
each round. Checked, not assumed: "on" answered with the x-ratelimit headers and refused
nothing.
"""

from __future__ import annotations

from contextlib import ExitStack

from .machine import pin, split_cpus
from .procs import HarnessError, request
from .report import Check, Row
from .rounds import (
    Contender,
    median_percentile,
    median_rate,
    paired_ratio,
    side_by_side,
    start_warm_sidecar,
)
from .stack import Bench

# Issue 16: hits with limits on at most 5 % slower than with limits off.
MIN_RATIO = 0.95
# Far above what one process answers in a minute: checked and counted, never refused.
HIGH_LIMIT = "1000000000"
SETS, ROUNDS_PER_SET = 3, 3
RATE_ROUNDS = SETS * ROUNDS_PER_SET
ROUND_S = 8  # per side-by-side round (scaled by --quick)


def _limited(side: Bench) -> bool:
    """Whether `side` answers a hit with the requests trio (its limits are on)."""
    headers = {"Authorization": side.auth, "Content-Type": "application/json"}
    url = side.sidecar + "/chat/completions"
    answer = request("POST", url, body=side.body.read_bytes(), headers=headers)
    return answer.status == 200 and "x-ratelimit-limit-requests" in answer.headers


def _one_set(bench: Bench, limits: dict[str, dict[str, str]], n: int) -> list[Contender]:
    """Fresh sidecars, pinned, measured for `ROUNDS_PER_SET` rounds: a process's own speed
    differs from another's with the same code by a few percent (seen: an identical sidecar
    read x1.04 over nine rounds), so each set's processes are new."""
    servers, load = split_cpus()
    with ExitStack() as stack:
        sides = {
            name: start_warm_sidecar(
                stack, bench, f"rate-{name}-{n}", redis_url=bench.redis_url, settings=settings
            )
            for name, settings in limits.items()
        }
        contenders = [Contender.of_sidecar(name, side) for name, side in sides.items()]
        for contender in contenders:
            pin(contender.pid, servers)
            contender.warm_up(bench)
        for r in range(ROUNDS_PER_SET):
            side_by_side(bench, contenders, bench.seconds(ROUND_S), load)
            for contender in contenders if r % 2 == 0 else contenders[::-1]:
                contender.paced(bench)
            for contender in contenders:
                contender.check()
        if not _limited(sides["on"]) or _limited(sides["off"]):
            raise HarnessError("only the rate-limited sidecar's hits carry x-ratelimit headers")
    return contenders


def rate_limits_hits(bench: Bench) -> list[Row]:
    calls = bench.upstream_calls()
    on_limits = {"RATE_TENANT_RPM": HIGH_LIMIT, "RATE_TENANT_TPM": HIGH_LIMIT}
    no_limits = {"RATE_TENANT_RPM": "0", "RATE_TENANT_TPM": "0"}
    limits = {"on": on_limits, "off": no_limits, "control": no_limits}
    kept = {name: Contender(name, "", 0, lambda: None) for name in limits}  # every set's runs
    for n in range(SETS):
        names = list(limits)[n:] + list(limits)[:n]  # each set starts them in another order
        for one in _one_set(bench, {name: limits[name] for name in names}, n):
            kept[one.name].wrk += one.wrk
            kept[one.name].hey += one.hey
            kept[one.name].cpu_s += one.cpu_s
    if bench.upstream_calls() != calls:
        raise HarnessError("requests of the rate-limit hit comparison reached the upstream")
    contenders = list(kept.values())
    on, off, control = contenders
    rate = {c.name: median_rate(c.wrk) for c in contenders}
    p50 = {c.name: median_percentile(c.hey, 50) for c in contenders}
    p99 = {c.name: median_percentile(c.hey, 99) for c in contenders}
    ratio, noise = paired_ratio(on.wrk, off.wrk, control.wrk), paired_ratio(control.wrk, off.wrk)
    return [
        Row(
            f"hit max req/s, rate limits on vs off, side by side on one CPU ({RATE_ROUNDS} "
            "rounds; ratio: median of the rounds' on over the mean of both offs)",
            f"{rate['on']:,.0f} vs {rate['off']:,.0f} / {rate['control']:,.0f} req/s "
            f"(x{ratio:.3f}); the two offs: x{noise:.3f}",
            (Check("on/off", ratio, MIN_RATIO, "", at_least=True),),
            data={
                "requests_per_s": {c.name: [r.requests_per_s for r in c.wrk] for c in contenders}
            },
        ),
        Row(
            "  paced hit p50 / p99, rate limits on vs off (hey -c1 -q1000)",
            f"{p50['on']:.2f} / {p99['on']:.2f} vs {p50['off']:.2f} / {p99['off']:.2f} ms",
            data={c.name: c.runs() for c in contenders},
        ),
        Row(
            "  sidecar CPU per hit, rate limits on vs off vs control",
            " vs ".join(f"{c.cpu_us_per_hit():.0f}" for c in contenders) + " us",
        ),
    ]
