"""Issue 22's row `hits_by_store`: the cache-hit path on each store and against the two floors,
in one run.

Five hit servers share the bench's private Redis and fake upstream: three fresh sidecars (the
in-process memory store; the Redis store with its near cache off, `NEAR_CACHE_MB=0` whatever
the default; the Redis store with its near cache on, `NEAR_CACHE_MB=64`) and bench/floor.py's
two minimal servers (aiohttp + redis-py GET, and aiohttp + an in-process dict after the same
decode and canonical hash: what the libraries allow with no store cost). They run the same
loads in alternating rounds (bench/rounds.py), one under load while the others idle: max hit
rate (`wrk -t1 -c32`) and paced latency (`hey -c1 -q1000`), each figure the median of the
rounds.

Checks (issue 22's done-when): the memory store at least as fast as the Redis store (req/s,
and paced p50/p99 no more than `HEY_STEP_MS` above: hey prints latencies in 0.1 ms steps, so
two latencies a few microseconds apart can land one step apart by rounding alone); the memory
store and Redis + near cache each at least 0.6x the dict floor's req/s with a paced p99 at
most 0.3 ms above the dict floor's.

A tree whose `proxy` package never reads NEAR_CACHE_MB ignores it (an unknown setting): its
Redis + near cache row then measures the plain Redis store, and the row says so. Only the
sidecar's own CPU time is counted per hit, not Redis's.
"""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path
from typing import Any

from .floor import DICT_STORE
from .report import Check, Row, ms
from .rounds import ROUNDS, Contender, Figures, run_rounds, start_warm_sidecar
from .stack import Bench, spawn_floor

NEAR_CACHE_MB = 64
NEAR_SETTING = "NEAR_CACHE_MB"
MIN_FLOOR_RATIO = 0.6  # of the dict floor's max req/s
MAX_P99_OVER_FLOOR_MS = 0.3  # paced p99 above the dict floor's
HEY_STEP_MS = 0.1  # hey's latency resolution: the tolerance of memory vs Redis latency

MEMORY, REDIS, NEAR = "memory store", "Redis store", "Redis + near cache"
REDIS_FLOOR, DICT_FLOOR = "floor: aiohttp + redis-py GET", "floor: aiohttp + dict"
SIDECARS = (MEMORY, REDIS, NEAR)


def reads_setting(proxy_file: Path, name: str) -> bool:
    """Whether the `proxy` package holding `proxy_file` mentions the setting `name` anywhere
    (a setting no module names is never read)."""
    package = proxy_file.parent
    return any(name in path.read_text(errors="replace") for path in package.rglob("*.py"))


def _start(stack: ExitStack, bench: Bench) -> tuple[list[Contender], bool]:
    """The five servers, in round order, and whether the near-cache sidecar reads the setting."""
    memory = start_warm_sidecar(stack, bench, "memory-store-sidecar", redis_url=None)
    redis, near = (
        start_warm_sidecar(
            stack, bench, name, redis_url=bench.redis_url, settings={NEAR_SETTING: str(mb)}
        )
        for name, mb in (("redis-store-sidecar", 0), ("redis-near-cache-sidecar", NEAR_CACHE_MB))
    )
    contenders = [
        Contender.of_sidecar(MEMORY, memory),
        Contender.of_sidecar(REDIS, redis),
        Contender.of_sidecar(NEAR, near),
        Contender.of_floor(REDIS_FLOOR, spawn_floor(stack, bench)),
        Contender.of_floor(DICT_FLOOR, spawn_floor(stack, bench, store=DICT_STORE)),
    ]
    return contenders, reads_setting(near.proxy_file, NEAR_SETTING)


def hits_by_store(bench: Bench) -> list[Row]:
    with ExitStack() as stack:
        contenders, near_read = _start(stack, bench)
        run_rounds(bench, contenders)
    figures = {contender.name: Figures.of(contender) for contender in contenders}
    runs = {contender.name: contender.runs() for contender in contenders}
    return store_rows(figures, runs, near_read)


def _floor_checks(name: str, mine: Figures, floor: Figures) -> tuple[Check, ...]:
    """The done-when's targets against the dict floor, for the memory store and the near cache."""
    if name not in (MEMORY, NEAR):
        return ()
    times = mine.requests_per_s / floor.requests_per_s
    p99_over = round(mine.p99_ms - floor.p99_ms, 3)  # hey's figures are 0.1 ms steps
    return (
        Check("x dict floor", times, MIN_FLOOR_RATIO, "", at_least=True),
        Check("p99 - floor's", p99_over, MAX_P99_OVER_FLOOR_MS, "ms"),
    )


def store_rows(
    figures: dict[str, Figures], runs: dict[str, dict[str, Any]], near_read: bool
) -> list[Row]:
    """One row per server in `figures` (median req/s and its ratio to the dict floor, paced
    p50/p99), the memory store against the Redis store, and the CPU time per hit."""
    floor = figures[DICT_FLOOR]
    rows = []
    for n, (name, mine) in enumerate(figures.items()):
        times = mine.requests_per_s / floor.requests_per_s
        label = f"hits by store, median of {ROUNDS}: {name}" if n == 0 else f"  {name}"
        value = (
            f"{mine.requests_per_s:,.0f} req/s = {times:.2f}x dict floor; "
            f"paced p50 {ms(mine.p50_ms)} / p99 {ms(mine.p99_ms)} ms"
        )
        extra: dict[str, Any] = {}
        if name == REDIS:
            label += f" ({NEAR_SETTING}=0)"
        if name == NEAR:
            label += f" ({NEAR_SETTING}={NEAR_CACHE_MB})"
            extra["near_cache_setting_read"] = near_read
            if not near_read:
                value += f" ({NEAR_SETTING} unread by this tree: plain Redis)"
        data = {
            "requests_per_s": mine.requests_per_s,
            "dict_floor_ratio": times,
            "paced_p50_ms": mine.p50_ms,
            "paced_p99_ms": mine.p99_ms,
            "runs": runs[name],
            **extra,
        }
        rows.append(Row(label, value, _floor_checks(name, mine, floor), data=data))
    return [*rows, _memory_vs_redis(figures[MEMORY], figures[REDIS]), _cpu_row(figures)]


def _memory_vs_redis(memory: Figures, redis: Figures) -> Row:
    """Memory at least as fast as Redis: req/s, and latency within one hey step."""
    times = memory.requests_per_s / redis.requests_per_s
    p50_over = round(memory.p50_ms - redis.p50_ms, 3)
    p99_over = round(memory.p99_ms - redis.p99_ms, 3)
    return Row(
        "  memory store vs Redis store",
        f"x{times:.2f} req/s; paced p50 {ms(memory.p50_ms)} vs {ms(redis.p50_ms)}, "
        f"p99 {ms(memory.p99_ms)} vs {ms(redis.p99_ms)} ms",
        (
            Check("x Redis", times, 1.0, "", at_least=True),
            Check("p50 - Redis's", p50_over, HEY_STEP_MS, "ms"),
            Check("p99 - Redis's", p99_over, HEY_STEP_MS, "ms"),
        ),
        data={"requests_per_s_ratio": times, "p50_over_ms": p50_over, "p99_over_ms": p99_over},
    )


def _cpu_row(figures: dict[str, Figures]) -> Row:
    """The server process's CPU time per hit over its wrk runs (Redis's own is not counted)."""
    us = {name: figures[name].cpu_us for name in figures}
    sidecars = " / ".join(f"{us[name]:.0f}" for name in SIDECARS)
    return Row(
        "  CPU per hit under wrk, memory / Redis / near",
        f"{sidecars} us (floors: redis-py {us[REDIS_FLOOR]:.0f}, dict {us[DICT_FLOOR]:.0f} us)",
        data={"cpu_us_per_request": us},
    )
