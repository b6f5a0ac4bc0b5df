"""How fast a fresh miss is refused while a trickling upstream holds every upstream slot (issue 19).

An upstream that answers 200 and then trickles a byte now and then never trips a read timeout,
so its calls keep their slots until the total timeout; a miss behind them once waited as long.
The sidecar now waits at most UPSTREAM_QUEUE_TIMEOUT for a slot and then answers 503
`upstream_busy` with Retry-After. A sidecar of its own (memory store, UPSTREAM_MAX_IN_FLIGHT=4,
UPSTREAM_QUEUE_TIMEOUT=0.05) in front of a fake upstream of its own with its `drip_ms` knob set
(one filler byte every 100 ms, never an end) gets 4 streaming `Cache-Control: no-store`
requests, which take every slot (checked on the fake's in-flight count); then fresh distinct
misses are timed one after another, each from sending to the end of its answer.
"""

from __future__ import annotations

import asyncio
import secrets
import statistics
import time
from contextlib import ExitStack

import aiohttp
import msgspec

from .procs import HarnessError, request
from .report import Check, Row, ms
from .stack import Bench, start_fake_upstream, start_sidecar

SLOTS = 4
QUEUE_TIMEOUT_S = 0.05
DRIP_MS = 100.0
PROBES = 5
REFUSED_MS = 100.0
HOLD_WAIT_S = 10.0
_PROBE_TIMEOUT = aiohttp.ClientTimeout(total=3)


def _body(text: str, *, stream: bool = False) -> bytes:
    return msgspec.json.encode(
        {
            "model": "gpt-4o-mini",
            "messages": [{"role": "user", "content": text}],
            "max_tokens": 20,
            "stream": stream,
        }
    )


def _fake(upstream: str, path: str, body: bytes | None = None) -> dict[str, object]:
    method = "GET" if body is None else "POST"
    answer = request(method, upstream.removesuffix("/v1") + path, body=body)
    if answer.status != 200:
        raise HarnessError(f"fake upstream {path}: {answer.status} {answer.body[:200]!r}")
    found: dict[str, object] = msgspec.json.decode(answer.body)
    return found


class _Probe(msgspec.Struct, frozen=True):
    status: int
    ms: float
    code: str | None
    retry_after: str | None


async def _probe(session: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> _Probe:
    body = _body(f"A fresh question {secrets.token_hex(8)} while the upstream trickles.")
    started = time.perf_counter()
    try:
        async with session.post(url, data=body, headers=headers, timeout=_PROBE_TIMEOUT) as answer:
            raw = await answer.read()
            elapsed = (time.perf_counter() - started) * 1000
    except TimeoutError:  # it got a slot after all, or waits for one: the drip never ends
        return _Probe(0, (time.perf_counter() - started) * 1000, "no answer", None)
    code = None
    if answer.status != 200:
        code = msgspec.json.decode(raw).get("error", {}).get("code")
    return _Probe(answer.status, elapsed, code, answer.headers.get("Retry-After"))


async def _run(url: str, upstream: str, auth: str) -> list[_Probe]:
    headers = {"Authorization": auth, "Content-Type": "application/json"}
    held = {**headers, "Cache-Control": "no-store"}
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(timeout=timeout) as session:

        async def hold(n: int) -> None:
            body = _body(f"Slot holder {n}, {secrets.token_hex(8)}.", stream=True)
            async with session.post(url, data=body, headers=held) as answer:
                async for _ in answer.content.iter_any():
                    pass  # until the drip is cleared or this task is cancelled

        holders = [asyncio.create_task(hold(n)) for n in range(SLOTS)]
        try:
            deadline = time.monotonic() + HOLD_WAIT_S
            while _fake(upstream, "/_fake/stats")["in_flight"] != SLOTS:
                if time.monotonic() > deadline or any(task.done() for task in holders):
                    stats = _fake(upstream, "/_fake/stats")
                    raise HarnessError(
                        f"{stats['in_flight']} of {SLOTS} slots held after {HOLD_WAIT_S:.0f} s"
                    )
                await asyncio.sleep(0.05)
            return [await _probe(session, url, headers) for _ in range(PROBES)]
        finally:
            for task in holders:
                task.cancel()
            await asyncio.gather(*holders, return_exceptions=True)


def busy_refusal(bench: Bench) -> list[Row]:
    workdir = bench.workdir / "busy-refusal"
    workdir.mkdir(exist_ok=True)
    with ExitStack() as stack:
        upstream = start_fake_upstream(stack, workdir, name="fake-upstream-drip")
        settings = {
            "UPSTREAM_MAX_IN_FLIGHT": str(SLOTS),
            "UPSTREAM_QUEUE_TIMEOUT": str(QUEUE_TIMEOUT_S),
        }
        sidecar = start_sidecar(
            stack, workdir, redis_url=None, upstream=upstream, settings=settings
        )
        _fake(upstream, "/_fake/knobs", msgspec.json.encode({"drip_ms": DRIP_MS}))
        try:
            probes = asyncio.run(_run(sidecar.sidecar + "/chat/completions", upstream, bench.auth))
        finally:
            _fake(upstream, "/_fake/knobs", msgspec.json.encode({"drip_ms": None}))
        sidecar.check_sidecar()
    answers = sorted({f"{p.status} {p.code or ''}".strip() for p in probes})
    retry_after = sorted({p.retry_after or "none" for p in probes})
    worst = max(p.ms for p in probes)
    refused = sum(p.status == 503 and p.code == "upstream_busy" for p in probes)
    return [
        Row(
            f"fresh miss while a drip holds all {SLOTS} slots (queue timeout "
            f"{QUEUE_TIMEOUT_S * 1000:g} ms)",
            f"{' / '.join(answers)} in {ms(worst)} ms (worst of {PROBES}; median "
            f"{ms(statistics.median(p.ms for p in probes))} ms), Retry-After "
            f"{', '.join(retry_after)}",
            (
                Check("refused in", worst, REFUSED_MS, "ms"),
                Check("503 upstream_busy", refused, PROBES, f"of {PROBES}", at_least=True),
            ),
            data={
                "slots": SLOTS,
                "queue_timeout_s": QUEUE_TIMEOUT_S,
                "drip_ms": DRIP_MS,
                "probes": [msgspec.to_builtins(p) for p in probes],
            },
        )
    ]
