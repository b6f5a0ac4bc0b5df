"""The sidecar's memory and a cached hit's latency under 16 concurrent gzip bombs (issue 23).

A 30 KB gzip body inflating to 30 MB was inflated whole by aiohttp's parser before any check:
16 at once took the process from 59 MB to 904 MB and held a cached hit 3.8 s. The sidecar now
inflates request bodies itself and stops at 100x the compressed bytes (or MAX_BODY_MB), a 413.
A sidecar of its own (memory store, default limits) in front of a fake upstream of its own
stores one answer; then 16 threads (in a process of their own) each send the issue's bomb (a
chat request with a 30 MB user message, gzip level 9) back to back for `BURST_S` seconds, while
the main thread asks for the cached answer one request after another on one keep-alive connection.
The row reports the sidecar's peak RSS (VmHWM), the hits' p99 (and p50) during the burst, and
how the bombs were answered. Counts are the issue's and not scaled by --quick.
"""

from __future__ import annotations

import gzip
import http.client
import multiprocessing
import statistics
import threading
import time
from collections import Counter
from contextlib import ExitStack
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event
from typing import Any

from .memory import status_kb
from .procs import HarnessError
from .report import Check, Row, ms
from .stack import Bench, chat_body, start_fake_upstream, start_sidecar

CLIENTS = 16
INFLATED_BYTES = 30 << 20
BURST_S = 5.0
PEAK_MB = 300.0
HIT_P99_MS = 100.0
REQUEST_TIMEOUT_S = 30.0


def bomb() -> bytes:
    """The issue's body: ~30 KB of gzip that inflates to a 30 MB chat request."""
    head = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"'
    return gzip.compress(head + b"a" * INFLATED_BYTES + b'"}]}', 9)


class _Conn:
    """One keep-alive connection to the sidecar's chat route, reopened after a close."""

    def __init__(self, url: str, headers: dict[str, str]) -> None:
        self._hostport, _, path = url.removeprefix("http://").partition("/")
        self._path = "/" + path
        self._headers = headers
        self._conn: http.client.HTTPConnection | None = None

    def post(self, body: bytes) -> tuple[int, str]:
        """Status and X-Cache, or status 0 and the error's name."""
        if self._conn is None:
            self._conn = http.client.HTTPConnection(self._hostport, timeout=REQUEST_TIMEOUT_S)
        try:
            self._conn.request("POST", self._path, body=body, headers=self._headers)
            answer = self._conn.getresponse()
            answer.read()
        except (OSError, http.client.HTTPException) as err:
            self.close()
            return 0, type(err).__name__
        if answer.will_close:
            self.close()
        return answer.status, answer.headers.get("X-Cache", "")

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _bombers(url: str, auth: str, payload: bytes, go: Event, stop: Event, out: Queue[Any]) -> None:
    """A process of its own (so the bombers do not share this process's GIL with the hits
    timed here): `CLIENTS` threads sending the bomb back to back from `go` until `stop`."""
    outcomes: Counter[str] = Counter()
    lock = threading.Lock()
    headers = {"Authorization": auth, "Content-Type": "application/json"}
    headers["Content-Encoding"] = "gzip"

    def bomber() -> None:
        conn = _Conn(url, headers)
        go.wait()
        while not stop.is_set():
            status, _ = conn.post(payload)
            with lock:
                outcomes[str(status)] += 1
        conn.close()

    threads = [threading.Thread(target=bomber, daemon=True) for _ in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    out.put(dict(outcomes))


def _burst(url: str, auth: str, hit: bytes, payload: bytes) -> tuple[Counter[str], list[float]]:
    """The bombs' outcomes and the hits' latencies (ms) while they ran."""
    context = multiprocessing.get_context("spawn")
    go, stop, out = context.Event(), context.Event(), context.Queue()
    process = context.Process(target=_bombers, args=(url, auth, payload, go, stop, out))
    process.start()
    prober = _Conn(url, {"Authorization": auth, "Content-Type": "application/json"})
    latencies: list[float] = []
    try:
        time.sleep(1.0)  # the process is up and its threads wait on `go`
        go.set()
        deadline = time.monotonic() + BURST_S
        while time.monotonic() < deadline:
            started = time.perf_counter()
            status, cache = prober.post(hit)
            latencies.append((time.perf_counter() - started) * 1000)
            if (status, cache) != (200, "HIT"):
                raise HarnessError(f"a hit during the bombs got {status} X-Cache {cache!r}")
        stop.set()
        outcomes: Counter[str] = Counter(out.get(timeout=REQUEST_TIMEOUT_S + 5))
    finally:
        stop.set()
        go.set()
        prober.close()
        process.join(REQUEST_TIMEOUT_S + 5)
        if process.is_alive():
            process.kill()
    return outcomes, latencies


def gzip_bombs_rss(bench: Bench) -> list[Row]:
    workdir = bench.workdir / "gzip-bombs"
    workdir.mkdir(exist_ok=True)
    with ExitStack() as stack:
        upstream = start_fake_upstream(stack, workdir, name="fake-upstream-gzip-bombs")
        sidecar = start_sidecar(stack, workdir, redis_url=None, upstream=upstream)
        url = sidecar.sidecar + "/chat/completions"
        hit = chat_body()
        warm = _Conn(url, {"Authorization": bench.auth, "Content-Type": "application/json"})
        answers = [warm.post(hit) for _ in range(3)]
        warm.close()
        if answers[-1] != (200, "HIT"):
            raise HarnessError(f"no cache hit before the bombs: {answers}")
        before = status_kb(sidecar.sidecar_pid, "VmRSS") / 1024
        payload = bomb()
        outcomes, latencies = _burst(url, bench.auth, hit, payload)
        sidecar.check_sidecar()
        peak = status_kb(sidecar.sidecar_pid, "VmHWM") / 1024
    p99 = statistics.quantiles(latencies, n=100)[98] if len(latencies) > 1 else latencies[0]
    p50 = statistics.median(latencies)
    bombs = sum(outcomes.values())
    answered = ", ".join(f"{v} x {k}" for k, v in sorted(outcomes.items()))
    return [
        Row(
            f"{CLIENTS} concurrent 30 KB gzip bombs (30 MB inflated) for {BURST_S:.0f} s: "
            "peak RSS / hit p99",
            f"{peak:.0f} MB / {ms(p99)} ms (idle {before:.0f} MB; hit p50 {ms(p50)} ms over "
            f"{len(latencies)} hits; bombs {answered})",
            (
                Check("peak", peak, PEAK_MB, "MB"),
                Check("hit p99", p99, HIT_P99_MS, "ms"),
                Check("bombs 413", outcomes["413"], bombs, f"of {bombs}", at_least=True),
            ),
            data={
                "clients": CLIENTS,
                "inflated_bytes": INFLATED_BYTES,
                "compressed_bytes": len(payload),
                "burst_s": BURST_S,
                "vm_hwm_mb": peak,
                "vm_rss_before_mb": before,
                "hit_p99_ms": p99,
                "hit_p50_ms": p50,
                "hits": len(latencies),
                "outcomes": dict(outcomes),
            },
        )
    ]
