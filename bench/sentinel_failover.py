"""A Sentinel failover under steady load (issue 15): 5xx count and seconds until hits resume.

A Sentinel group of its own (tests/fixtures/redis_sentinel.py: a primary, 2 replicas, 3
sentinels, down-after-milliseconds 1000) and a sidecar on `redis+sentinel://` in front of the
bench's fake upstream get steady chat traffic from a few concurrent clients, half repeated
prompts (hits once stored), half new ones (misses). Once hits flow the primary is killed;
the row gives the answers that were not 200 (the target: none), the seconds until the sentinels
promoted a replica (Sentinel's own time, for scale), the seconds from that promotion until the
first hit, and the misses served meanwhile. Not scaled by --quick (about 15 s).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass

import aiohttp
import msgspec

from tests.fixtures.redis_sentinel import SentinelGroup

from .procs import HarnessError
from .report import Check, Row
from .stack import Bench, start_sidecar

CLIENTS = 4
RESUME_LIMIT_S = 5.0  # "hits come back within a few seconds of the promotion"
GIVE_UP_S = 30.0
PROMPTS = [f"Failover question {n}?" for n in range(4)]


@dataclass(frozen=True)
class _Answer:
    started: float
    status: int
    cache: str


class _Load:
    def __init__(self, url: str, auth: str) -> None:
        self.url, self.auth = url, auth
        self.answers: list[_Answer] = []
        self.stop = threading.Event()

    def first_hit_after(self, moment: float) -> float | None:
        return next(
            (a.started for a in list(self.answers) if a.started > moment and a.cache == "HIT"),
            None,
        )

    async def run(self) -> None:
        headers = {"Authorization": self.auth, "Content-Type": "application/json"}
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(headers=headers, timeout=timeout) as session:
            await asyncio.gather(*(self._client(session, c) for c in range(CLIENTS)))

    async def _client(self, session: aiohttp.ClientSession, client: int) -> None:
        n = 0
        while not self.stop.is_set():
            prompt = PROMPTS[n // 2 % len(PROMPTS)] if n % 2 == 0 else f"New {client}-{n}"
            body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": prompt}]}
            started = time.monotonic()
            try:
                async with session.post(self.url, data=msgspec.json.encode(body)) as answer:
                    await answer.read()
                    status, cache = answer.status, answer.headers.get("X-Cache", "")
            except (aiohttp.ClientError, TimeoutError):
                status, cache = 599, ""
            self.answers.append(_Answer(started, status, cache))
            n += 1
            await asyncio.sleep(0.01)


def _wait(what: str, done: Callable[[], bool], timeout_s: float = GIVE_UP_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():
        if time.monotonic() > deadline:
            raise HarnessError(f"{what}: not within {timeout_s:g} s")
        time.sleep(0.05)


def sentinel_failover(bench: Bench) -> list[Row]:
    workdir = bench.workdir / "sentinel-failover"
    workdir.mkdir(exist_ok=True)
    with ExitStack() as stack:
        group = stack.enter_context(SentinelGroup())
        sidecar = start_sidecar(stack, workdir, redis_url=group.url, upstream=bench.upstream)
        load = _Load(sidecar.sidecar + "/chat/completions", bench.auth)
        thread = threading.Thread(target=asyncio.run, args=(load.run(),))
        thread.start()
        try:
            _wait("hits before the kill", lambda: load.first_hit_after(0.0) is not None)
            old = group.primary_port()
            group.kill_primary()
            killed_at = time.monotonic()
            group.wait_promoted(old)
            promoted_at = time.monotonic()
            _wait("hits after the promotion", lambda: load.first_hit_after(promoted_at) is not None)
            time.sleep(1.0)  # and a second of steady state after
        finally:
            load.stop.set()
            thread.join(30)
        sidecar.check_sidecar()
    resumed_at = load.first_hit_after(promoted_at)
    assert resumed_at is not None
    statuses = Counter(a.status for a in load.answers)
    errors = sum(n for status, n in statuses.items() if status != 200)
    outage = [a for a in load.answers if killed_at < a.started < promoted_at]
    resume_s = max(0.0, resumed_at - promoted_at)
    promotion_s = promoted_at - killed_at
    return [
        Row(
            f"sentinel failover, primary killed under load ({CLIENTS} clients)",
            f"{errors} non-200 of {len(load.answers)}; hits back {resume_s:.2f} s after the "
            f"promotion",
            (
                Check("non-200", errors, 0, ""),
                Check("hits back", resume_s, RESUME_LIMIT_S, "s"),
            ),
            data={
                "requests": len(load.answers),
                "statuses": {str(k): v for k, v in statuses.items()},
                "promotion_s": promotion_s,
                "hits_resume_after_promotion_s": resume_s,
                "requests_without_primary": len(outage),
                "hits_without_primary": sum(1 for a in outage if a.cache == "HIT"),
            },
        ),
        Row(
            "  kill to promotion (Sentinel), answers meanwhile",
            f"{promotion_s:.1f} s, {len(outage)} answers "
            f"({sum(1 for a in outage if a.cache == 'HIT')} hits)",
        ),
    ]
