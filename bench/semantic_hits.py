"""Issue 13's row `semantic_exact_hits`: what the semantic cache costs the exact hit path
(nothing, by design: it only runs after an exact miss). Two sidecars, SEMANTIC_CACHE=on and
off, under the same wrk hit load in alternating rounds (as bench/versus.py)."""

from __future__ import annotations

import re
from contextlib import ExitStack
from dataclasses import replace

import msgspec

from . import loadgen
from .machine import process_cpu_s
from .parse import WrkResult
from .procs import HarnessError, request, wait_until
from .report import Check, Row
from .semantic import chat_body_of
from .stack import Bench, start_sidecar, warm_cache

ROUNDS, RUN_S = 3, 5  # wrk runs per side, seconds each
MIN_RATIO = 0.95


def _semantic_ready(side: Bench) -> None:
    """Asks new questions until one is looked up (not skipped): the model is loaded."""
    url, headers = side.sidecar + "/chat/completions", {"Authorization": side.auth}
    asked = iter(range(1_000_000))

    def looked_up() -> bool:
        body = msgspec.json.encode(chat_body_of(f"Is the model loaded yet, try {next(asked)}?"))
        if request("POST", url, body=body, headers=headers).status != 200:
            raise HarnessError("a question to the semantic sidecar failed")
        text = request("GET", side.admin + "/metrics").body.decode()
        return re.search(r'lookups_total\{result="miss"\} [1-9]', text) is not None

    what = "the semantic sidecar's model"
    wait_until(looked_up, what=what, proc=side.sidecar_proc, log=side.sidecar_log, timeout_s=120)


def _wrk(side: Bench, seconds: int) -> WrkResult:
    url = side.sidecar + "/chat/completions"
    return loadgen.wrk(url, side.body, auth=side.auth, threads=1, connections=32, seconds=seconds)


def semantic_exact_hits(bench: Bench) -> list[Row]:
    sides: dict[str, Bench] = {}
    rates: dict[str, list[float]] = {"on": [], "off": []}
    cpu = {"on": 0.0, "off": 0.0}
    with ExitStack() as stack:
        for name in ("on", "off"):
            workdir = bench.workdir / f"semantic-{name}-sidecar"
            workdir.mkdir()
            settings = {"SEMANTIC_CACHE": name, "SEMANTIC_EMBEDDER": "local"}
            side = start_sidecar(
                stack,
                workdir,
                redis_url=bench.redis_url,
                upstream=bench.upstream,
                settings=settings,
            )
            sides[name] = replace(side, scale=bench.scale)
        _semantic_ready(sides["on"])
        for side in sides.values():
            warm_cache(side)
            _wrk(side, 1)
        calls = bench.upstream_calls()
        for n in range(ROUNDS):
            for name in ("on", "off") if n % 2 == 0 else ("off", "on"):
                before = process_cpu_s(sides[name].sidecar_pid)
                result = _wrk(sides[name], bench.seconds(RUN_S))
                rates[name].append(result.requests_per_s)
                cpu[name] += (process_cpu_s(sides[name].sidecar_pid) - before) / result.requests
        for side in sides.values():
            side.check_sidecar()
        if bench.upstream_calls() != calls:
            raise HarnessError("requests of the semantic hit comparison reached the upstream")
    on, off = max(rates["on"]), max(rates["off"])
    us = {name: cpu[name] / ROUNDS * 1e6 for name in cpu}
    return [
        Row(
            f"exact hit max req/s, SEMANTIC_CACHE on vs off (wrk -t1 -c32, best of {ROUNDS})",
            f"{on:,.0f} vs {off:,.0f} req/s (x{on / off:.2f})",
            (Check("on/off", on / off, MIN_RATIO, "", at_least=True),),
            data={"requests_per_s": rates, "ratio": on / off},
        ),
        Row(
            "  sidecar CPU per exact hit, on vs off",
            f"{us['on']:.0f} vs {us['off']:.0f} us",
            data={"cpu_us_per_request": us},
        ),
    ]
