"""Upstream calls saved under a duplicate-heavy load: single-flight (COALESCED) and the cache (HIT).

A second sidecar (same Redis, its own work dir) in front of a fake upstream that takes 100 ms per
call gets 2,000 chat requests over 50 distinct prompts from 64 concurrent clients. Each prompt
"trends" for a moment: its requests are clustered around one point of the run (seeded, so every
run sends the same sequence), so identical requests overlap while the first is still in flight
(those are coalesced) and keep coming after it landed (those are hits). The row reports the
upstream calls the fake upstream counted against the requests sent, and what saved the rest.
Standalone: `python -m bench.coalescing [--quick]` starts its own Redis and servers.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import secrets
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path

import aiohttp
import msgspec

from .procs import HarnessError
from .report import Check, Row, format_table
from .stack import Bench, start_fake_upstream, start_redis, start_sidecar

PROMPTS = 50
REQUESTS = 2000
CLIENTS = 64
LATENCY_MS = 100.0
SPREAD = 0.02  # how long a prompt trends, as a share of the run (standard deviation)
SEED = 3


def _schedule(n: int, run_id: str) -> list[bytes]:
    """`n` request bodies over `PROMPTS` prompts, each prompt's requests clustered in time."""
    rng = random.Random(SEED)
    timed: list[tuple[float, int]] = []
    for prompt in range(PROMPTS):
        centre = (prompt + 0.5) / PROMPTS
        share = n // PROMPTS + (1 if prompt < n % PROMPTS else 0)
        timed += [(rng.gauss(centre, SPREAD), prompt) for _ in range(share)]
    timed.sort()
    return [_body(prompt, run_id) for _, prompt in timed]


def _body(prompt: int, run_id: str) -> bytes:
    question = f"Lesson summary {prompt} for the course of run {run_id}, please."
    return msgspec.json.encode(
        {
            "model": "gpt-4o-mini",
            "messages": [{"role": "user", "content": question}],
            "max_tokens": 60,
        }
    )


async def _load(url: str, auth: str, bodies: list[bytes]) -> tuple[Counter[str], float]:
    """Sends `bodies` in order from `CLIENTS` concurrent clients; X-Cache counts, seconds."""
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)
    seen: Counter[str] = Counter()
    headers = {"Authorization": auth, "Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=CLIENTS)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def client() -> None:
            while not queue.empty():
                body = queue.get_nowait()
                async with session.post(url, data=body, headers=headers) as answer:
                    await answer.read()
                    if answer.status != 200:
                        raise HarnessError(f"a request got {answer.status}")
                    seen[answer.headers.get("X-Cache", "(none)")] += 1

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(CLIENTS)))
        return seen, time.perf_counter() - started


def coalescing_savings(bench: Bench) -> list[Row]:
    workdir = bench.workdir / "coalescing"
    workdir.mkdir(exist_ok=True)
    upstream = start_fake_upstream(
        bench.stack, workdir, latency_ms=LATENCY_MS, name="fake-upstream-100ms"
    )
    sidecar = start_sidecar(bench.stack, workdir, redis_url=bench.redis_url, upstream=upstream)
    n = bench.count(REQUESTS)
    bodies = _schedule(n, secrets.token_hex(4))
    seen, seconds = asyncio.run(_load(sidecar.sidecar + "/chat/completions", bench.auth, bodies))
    sidecar.check_sidecar()
    calls = sidecar.upstream_calls()
    if calls != seen["MISS"]:
        raise HarnessError(f"{calls} upstream calls but {seen['MISS']} requests answered MISS")
    value = (
        f"{n:,} requests -> {calls:,} upstream calls: "
        f"{seen['HIT']:,} HIT, {seen['COALESCED']:,} COALESCED"
    )
    return [
        Row(
            f"coalescing: {PROMPTS} prompts, {CLIENTS} clients, stub {LATENCY_MS:.0f} ms",
            value,
            (Check("upstream calls", calls, PROMPTS, "calls"),),
            data={
                "requests": n,
                "prompts": PROMPTS,
                "clients": CLIENTS,
                "upstream_latency_ms": LATENCY_MS,
                "upstream_calls": calls,
                "x_cache": dict(seen),
                "seconds": seconds,
            },
        ),
        Row(
            "  calls saved by single-flight / by the cache",
            f"{seen['COALESCED'] / n:.0%} / {seen['HIT'] / n:.0%} of requests "
            f"(a cache alone: {calls + seen['COALESCED']:,} upstream calls)",
        ),
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.coalescing")
    parser.add_argument("--quick", action="store_true", help="a fifth of the requests")
    args = parser.parse_args(argv)
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="sidecache-co-")))
        redis_url = start_redis(stack, workdir)
        upstream = start_fake_upstream(stack, workdir)
        bench = start_sidecar(stack, workdir, redis_url=redis_url, upstream=upstream)
        bench.scale = 0.2 if args.quick else 1.0
        try:
            rows = coalescing_savings(bench)
        except HarnessError as err:
            print(f"bench: coalescing failed: {err}", file=sys.stderr)
            return 1
    print(format_table(rows, []))
    return 0


if __name__ == "__main__":
    sys.exit(main())
