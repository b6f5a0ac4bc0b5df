"""How far a tenant's daily budget is overshot when 300 misses arrive at once (issue 19).

Before a miss goes upstream the sidecar holds its estimated cost against the budget (one
atomic reservation in Redis) and answers 429 `budget_exceeded` when it would not fit; once the
answer is in, the hold is replaced by the real cost. Checks that happen before spend is
counted let a burst through all at once; this row measures that they do not. A sidecar of its
own (the bench's Redis, BUDGET_TENANT_DAILY_USD=0.001, a ledger file of its own) in front of a
fake upstream of its own that takes 200 ms per call (so every call of the burst overlaps) gets
300 distinct chat misses at once from one tenant (a fresh bearer token: the bench's other
sidecars count the usual token's spend in the same Redis). Overshoot = the cost the ledger
recorded (sum(cost) of ai_requests, once every 200 is in it) - the budget; the target is at
most one request's pre-flight estimate, computed as proxy/ledger/pricing.py's
PriceTable.estimate does for these bodies (all the same length). The count is not scaled by
--quick: the row is about that burst.
"""

from __future__ import annotations

import asyncio
import secrets
import sqlite3
import time
from collections import Counter
from contextlib import ExitStack, closing
from pathlib import Path

import aiohttp
import msgspec

from proxy.ledger.pricing import PriceTable, default_pricing_path, read_price_file

from .procs import HarnessError
from .report import Check, Row
from .stack import Bench, start_fake_upstream, start_sidecar

REQUESTS = 300
BUDGET_USD = 0.001
LATENCY_MS = 200.0
MODEL = "gpt-4o-mini"
MAX_TOKENS = 100
LEDGER_WAIT_S = 15.0


def chat_body(n: int, run_id: str) -> bytes:
    """Request `n` of the burst: distinct, and the same length for every `n` < 1,000,000."""
    question = (
        f"Budget burst {run_id}, question {n:06d}: what does a cache in front of an API save?"
    )
    return msgspec.json.encode(
        {
            "model": MODEL,
            "messages": [{"role": "user", "content": question}],
            "max_tokens": MAX_TOKENS,
        }
    )


def estimate_usd(prices: PriceTable, body: bytes) -> float:
    """The sidecar's pre-flight estimate of one such request (proxy/handlers/costing.py)."""
    return prices.estimate(MODEL, len(body), MAX_TOKENS)


async def _burst(url: str, auth: str, bodies: list[bytes]) -> tuple[Counter[int], str]:
    """Every body at once; the statuses, and one 429's message (to show what it said)."""
    statuses: Counter[int] = Counter()
    refusals: list[str] = []
    headers = {"Authorization": auth, "Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def send(body: bytes) -> None:
            async with session.post(url, data=body, headers=headers) as answer:
                text = await answer.read()
                statuses[answer.status] += 1
                if answer.status == 429 and not refusals:
                    refusals.append(msgspec.json.decode(text)["error"]["message"])

        await asyncio.gather(*(send(body) for body in bodies))
    return statuses, refusals[0] if refusals else ""


def _ledger(path: Path) -> tuple[int, float]:
    """(answered 200 rows, sum of their cost) of the ledger file."""
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)) as db:
        rows, spent = db.execute(
            "SELECT count(*), coalesce(sum(cost), 0) FROM ai_requests WHERE status = 200"
        ).fetchone()
    return int(rows), float(spent)


def _recorded(path: Path, answered: int) -> float:
    """The cost recorded once all `answered` requests are in the ledger (it flushes ~1/s)."""
    deadline = time.monotonic() + LEDGER_WAIT_S
    rows = 0
    while time.monotonic() < deadline:
        rows, spent = _ledger(path)
        if rows >= answered:
            return spent
        time.sleep(0.2)
    raise HarnessError(f"the ledger holds {rows} of {answered} answered requests after 15 s")


def budget_overshoot(bench: Bench) -> list[Row]:
    workdir = bench.workdir / "budget-overshoot"
    workdir.mkdir(exist_ok=True)
    run_id = secrets.token_hex(4)
    bodies = [chat_body(n, run_id) for n in range(REQUESTS)]
    prices = PriceTable(read_price_file(default_pricing_path()))
    estimate = estimate_usd(prices, bodies[0])
    with ExitStack() as stack:
        upstream = start_fake_upstream(
            stack, workdir, latency_ms=LATENCY_MS, name="fake-upstream-200ms"
        )
        settings = {"BUDGET_TENANT_DAILY_USD": str(BUDGET_USD)}
        sidecar = start_sidecar(
            stack, workdir, redis_url=bench.redis_url, upstream=upstream, settings=settings
        )
        auth = f"Bearer sk-bench-budget-{run_id}"
        started = time.perf_counter()
        statuses, refusal = asyncio.run(_burst(sidecar.sidecar + "/chat/completions", auth, bodies))
        seconds = time.perf_counter() - started
        sidecar.check_sidecar()
        if set(statuses) - {200, 429}:
            raise HarnessError(f"statuses other than 200 and 429: {dict(statuses)}")
        spent = _recorded(workdir / "ledger.db", statuses[200])
    overshoot = spent - BUDGET_USD
    return [
        Row(
            f"budget overshoot, {REQUESTS} concurrent misses, budget ${BUDGET_USD:g}/day",
            f"{overshoot * 1e6:+.1f} uUSD (spent {spent * 1e6:.1f} uUSD in {statuses[200]} "
            f"x 200, {statuses[429]} x 429)",
            (Check("overshoot", overshoot * 1e6, estimate * 1e6, "uUSD (1 request)"),),
            data={
                "requests": REQUESTS,
                "budget_usd": BUDGET_USD,
                "spent_usd": spent,
                "overshoot_usd": overshoot,
                "estimate_usd": estimate,
                "statuses": {str(k): v for k, v in statuses.items()},
                "upstream_latency_ms": LATENCY_MS,
                "seconds": seconds,
                "a_429_said": refusal,
            },
        ),
        Row(
            "  one request's pre-flight estimate, burst time",
            f"{estimate * 1e6:.1f} uUSD ({len(bodies[0])} B body, max_tokens {MAX_TOKENS}), "
            f"{seconds:.1f} s",
        ),
    ]
