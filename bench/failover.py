"""Issue 16's `miss_failover`: misses while the upstream fails 30 % of its calls with 503.

Two fake upstreams of its own (`primary`, `backup`) and a sidecar of its own (memory store)
routed by a config file: gpt-4o-mini goes to primary, falls back to backup, with the default
UPSTREAM_RETRIES=2. Distinct misses (`Cache-Control: no-store`, 4 at a time) are sent first
with primary healthy, then with its `fail_rate` knob at 0.3 and `fail_status` 503 (3 of every
10 consecutive calls fail), in alternating rounds. Reported: the client-visible error rate
under failure (target 0 %) and the p99 latency it adds over the healthy rounds (the back-off
before each retry is most of it).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from contextlib import ExitStack

import aiohttp
import msgspec

from tests.fixtures.upstreams import routing_toml

from .procs import HarnessError, request
from .report import Check, Row, ms
from .stack import Bench, start_fake_upstream, start_sidecar

FAIL_RATE = 0.3
REQUESTS = 400  # per round, scaled by --quick
ROUNDS = 2
CONCURRENCY = 4


def _knobs(upstream: str, knobs: dict[str, object]) -> None:
    url = upstream.removesuffix("/v1") + "/_fake/knobs"
    answer = request("POST", url, body=msgspec.json.encode(knobs))
    if answer.status != 200:
        raise HarnessError(f"fake upstream knobs: {answer.status} {answer.body[:200]!r}")


async def _round(url: str, auth: str, count: int) -> tuple[list[float], int]:
    """Latencies (ms) of `count` distinct misses, and how many were not 200."""
    headers = {"Authorization": auth, "Content-Type": "application/json"}
    headers["Cache-Control"] = "no-store"
    latencies: list[float] = []
    errors = 0
    queue = list(range(count))
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:

        async def worker() -> None:
            nonlocal errors
            while queue:
                queue.pop()
                body = msgspec.json.encode(
                    {
                        "model": "gpt-4o-mini",
                        "messages": [{"role": "user", "content": secrets.token_hex(12)}],
                        "max_tokens": 16,
                    }
                )
                started = time.perf_counter()
                async with session.post(url, data=body, headers=headers) as answer:
                    await answer.read()
                latencies.append((time.perf_counter() - started) * 1000)
                errors += answer.status != 200

        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return latencies, errors


def _p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def miss_failover(bench: Bench) -> list[Row]:
    workdir = bench.workdir / "miss-failover"
    workdir.mkdir(exist_ok=True)
    count = max(50, int(REQUESTS * bench.scale))
    with ExitStack() as stack:
        primary = start_fake_upstream(stack, workdir, name="fake-upstream-primary")
        backup = start_fake_upstream(stack, workdir, name="fake-upstream-backup")
        config = workdir / "routes.toml"
        config.write_text(routing_toml(primary, backup))  # gpt-4o-mini falls back to backup
        sidecar = start_sidecar(
            stack,
            workdir,
            redis_url=None,
            upstream=primary,
            settings={"SIDECACHE_CONFIG": str(config)},
        )
        url = sidecar.sidecar + "/chat/completions"
        healthy: list[float] = []
        failing: list[float] = []
        errors = sent = 0
        for _ in range(ROUNDS):
            _knobs(primary, {"fail_rate": 0.0})
            latencies, bad = asyncio.run(_round(url, bench.auth, count))
            if bad:
                raise HarnessError(f"{bad} errors with a healthy upstream")
            healthy += latencies
            _knobs(primary, {"fail_rate": FAIL_RATE, "fail_status": 503})
            latencies, bad = asyncio.run(_round(url, bench.auth, count))
            failing += latencies
            errors, sent = errors + bad, sent + count
        _knobs(primary, {"fail_rate": 0.0})
        sidecar.check_sidecar()
    rate = errors / sent * 100
    added = _p99(failing) - _p99(healthy)
    return [
        Row(
            f"misses, upstream failing {FAIL_RATE:.0%} with 503 (2 retries + a fallback)",
            f"{rate:.2f} % client errors of {sent}; p99 {ms(_p99(failing))} ms vs "
            f"{ms(_p99(healthy))} ms healthy (+{ms(added)} ms)",
            (Check("client errors", rate, 0.0, "%"),),
            data={
                "requests": sent,
                "errors": errors,
                "p99_failing_ms": _p99(failing),
                "p99_healthy_ms": _p99(healthy),
                "p99_added_ms": added,
                "concurrency": CONCURRENCY,
            },
        )
    ]
