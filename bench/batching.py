"""Embeddings throughput, micro-batched vs unbatched (issue 3), against a stub upstream of its own
that allows 8 calls at once and takes 50 ms for each.

wrk keeps `CONNECTIONS` connections busy with single-input embedding requests, every input
distinct (a per-run prefix and a counter), so neither the cache nor batch de-duplication helps.
The same load runs against two sidecars in turn, each on its own memory cache: one batching
(`AI_BATCH_SIZE=64`, `AI_BATCH_WAIT_MS=5`) and one with batching off (`AI_BATCH_SIZE=1`: every
request its own upstream call). Unbatched, the stub's 8 slots cap the rate at 8 / 50 ms = 160
requests/s. Batched, a closed loop of C clients cannot pass C / (50 ms + wait), so C must be
well above 8 x the target ratio for the ratio to show: hence 256 connections, not 64.
Standalone: `python -m bench.batching [--quick]`.
"""

from __future__ import annotations

import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import msgspec

from .parse import ParseError, WrkResult, parse_wrk
from .procs import HarnessError, answers_200, clean_env, free_port, request, spawn, wait_until
from .report import Check, Row, in_temp_dir, ms, run_standalone
from .stack import AUTH, SETTING_NAMES, Bench, start_fake_upstream

TARGET_RATIO = 10.0
CONNECTIONS = 256
LATENCY_MS, MAX_CONCURRENCY = 50, 8
BATCHED = {"AI_BATCH_SIZE": "64", "AI_BATCH_WAIT_MS": "5"}
UNBATCHED = {"AI_BATCH_SIZE": "1", "AI_BATCH_WAIT_MS": "5"}
_SECONDS = 5

# Distinct single-input embedding requests; done() prints the BENCH_JSON line of bench/hit.lua.
_LUA = """
local prefix, auth, counter = "", "", 0
function init(args) prefix = args[1]; auth = args[2] end
function request()
   counter = counter + 1
   local body = '{"model":"text-embedding-3-small","input":"' .. prefix .. ' lesson '
      .. counter .. ' about caching"}'
   return wrk.format("POST", nil,
      {["Content-Type"] = "application/json", ["Authorization"] = auth}, body)
end
function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,'
         .. '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},'
         .. '"latency_us":{"min":%d,"mean":%.1f,"max":%d,"p50":%d,"p90":%d,"p99":%d,"p999":%d}}\\n',
      summary.requests, summary.duration, summary.bytes,
      e.connect, e.read, e.write, e.status, e.timeout,
      latency.min, latency.mean, latency.max,
      latency:percentile(50), latency:percentile(90), latency:percentile(99),
      latency:percentile(99.9)))
end
"""


class _Run(msgspec.Struct, frozen=True):
    wrk: WrkResult
    calls: int  # upstream embedding calls during the run
    inputs: int  # inputs those calls carried

    @property
    def per_call(self) -> float:
        return self.inputs / self.calls if self.calls else 0.0


def embedding_calls(upstream: str) -> tuple[int, int]:
    stats = msgspec.json.decode(request("GET", upstream.removesuffix("/v1") + "/_fake/stats").body)
    per_call: list[int] = stats["embedding_inputs_per_call"]
    return len(per_call), sum(per_call)


def start_batching_sidecar(
    stack: ExitStack, workdir: Path, name: str, upstream: str, env: dict[str, str]
) -> str:
    proxy_port, admin_port = free_port(), free_port()
    settings = {
        "PROXY_HOST": "127.0.0.1",
        "PROXY_PORT": str(proxy_port),
        "ADMIN_HOST": "127.0.0.1",
        "ADMIN_PORT": str(admin_port),
        "UPSTREAM_BASE_URL": upstream,
        "LEDGER_PATH": str(workdir / f"{name}.db"),
        "LOG_LEVEL": "WARNING",
        **env,
    }
    log = workdir / f"{name}.log"
    proc = spawn(
        stack,
        [sys.executable, "-m", "proxy", "serve"],
        log,
        clean_env(settings, drop=SETTING_NAMES),
    )
    admin = f"http://127.0.0.1:{admin_port}"
    wait_until(lambda: answers_200(admin + "/readyz"), what=name, proc=proc, log=log)
    return f"http://127.0.0.1:{proxy_port}/v1"


def _load(workdir: Path, url: str, prefix: str, seconds: int) -> WrkResult:
    script = workdir / "embed.lua"
    script.write_text(_LUA)
    argv = [
        "wrk",
        "-t1",
        f"-c{CONNECTIONS}",
        f"-d{seconds}s",
        "--timeout",
        "10s",
        "-s",
        str(script),
    ]
    try:
        done = subprocess.run(
            [*argv, url + "/embeddings", "--", prefix, AUTH],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=seconds + 30,
            check=False,
        )
    except subprocess.TimeoutExpired as err:
        raise HarnessError(f"wrk did not finish in {seconds + 30} s") from err
    if done.returncode != 0:
        raise HarnessError(f"wrk exited with status {done.returncode}: {done.stderr[-500:]}")
    try:
        result = parse_wrk(done.stdout)
    except ParseError as err:
        raise HarnessError(f"{err}:\n{done.stdout[-800:]}") from err
    if result.errors.total or result.requests == 0:
        raise HarnessError(f"wrk: {result.requests} requests, errors {result.errors}")
    return result


def _run(workdir: Path, upstream: str, name: str, env: dict[str, str], seconds: int) -> _Run:
    with ExitStack() as stack:
        url = start_batching_sidecar(stack, workdir, name, upstream, env)
        calls, inputs = embedding_calls(upstream)
        result = _load(workdir, url, f"{name}-{time.time_ns()}", seconds)
        after_calls, after_inputs = embedding_calls(upstream)
    return _Run(result, after_calls - calls, after_inputs - inputs)


def measure(workdir: Path, scale: float) -> list[Row]:
    seconds = max(2, round(_SECONDS * scale))
    with ExitStack() as stack:
        upstream = start_fake_upstream(
            stack,
            workdir,
            latency_ms=LATENCY_MS,
            max_concurrency=MAX_CONCURRENCY,
            name="fake-upstream-limited",
        )
        batched = _run(workdir, upstream, "sidecar-batched", BATCHED, seconds)
        unbatched = _run(workdir, upstream, "sidecar-unbatched", UNBATCHED, seconds)
    fast, slow = batched.wrk.requests_per_s, unbatched.wrk.requests_per_s
    ratio = fast / slow
    return [
        Row(
            f"embeddings batched vs unbatched (stub: {MAX_CONCURRENCY} at once, {LATENCY_MS} ms; "
            f"wrk -c{CONNECTIONS}, distinct single inputs)",
            f"{fast:,.0f} vs {slow:,.0f} req/s = x{ratio:.1f}",
            (Check("ratio", ratio, TARGET_RATIO, "x", at_least=True),),
            data={"batched_per_s": fast, "unbatched_per_s": slow, "ratio": ratio},
        ),
        _detail("batched: AI_BATCH_SIZE=64, AI_BATCH_WAIT_MS=5", batched),
        _detail("unbatched: AI_BATCH_SIZE=1", unbatched),
    ]


def _detail(label: str, run: _Run) -> Row:
    lat = run.wrk.latency_us
    return Row(
        f"  {label}",
        f"{run.wrk.requests:,} answers, {run.calls:,} upstream calls "
        f"({run.per_call:.1f} inputs each), p50 {ms(lat.p50 / 1000)} / p99 {ms(lat.p99 / 1000)} ms",
        data={"wrk": run.wrk, "upstream_calls": run.calls, "inputs_per_call": run.per_call},
    )


def embeddings_batching(bench: Bench) -> list[Row]:
    return measure(bench.workdir, bench.scale)


def main() -> int:
    return run_standalone(
        "python -m bench.batching", __doc__, in_temp_dir("sidecache-batching-", measure)
    )


if __name__ == "__main__":
    sys.exit(main())
