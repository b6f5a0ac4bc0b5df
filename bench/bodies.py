"""The sidecar's memory under 30 concurrent 31 MB chat bodies (issue 19).

30 concurrent 31 MB bodies once took the process past 2 GB; the sidecar now holds at most
MAX_INFLIGHT_BODY_MB (default 128) of request bodies at once and answers the rest 503
`overloaded` before reading them. A sidecar of its own (memory store, default body limits)
in front of a fake upstream of its own (which keeps what it receives, so it must not be the
shared one) gets 30 distinct ~31 MB chat requests at once, each one long user message, from 30
threads of this process. The row reports the sidecar's peak RSS (VmHWM, which the kernel keeps
even between two polls), its RSS 5 s after the burst, and how the 30 were answered.

The 30 bodies share one 31 MB filler: each is sent as its own head, the shared filler and a
tail with a Content-Length (not chunked: a chunked body counts as the largest allowed), so the
driver holds ~31 MB rather than ~1 GB. Counts are not scaled by --quick: the row is about
these sizes.
"""

from __future__ import annotations

import contextlib
import http.client
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack

from .memory import children, status_kb
from .procs import HarnessError
from .report import Check, Row
from .stack import Bench, start_fake_upstream, start_sidecar

CLIENTS = 30
BODY_BYTES = 31 * 1024 * 1024
PEAK_MB = 600.0
AFTER_MB = 150.0
SETTLE_S = 5.0
REQUEST_TIMEOUT_S = 60.0
_FILLER = b"lorem ipsum dolor sit amet "


class BigBody:
    """One chat request body of exactly `size` bytes, one long user message, in three parts:
    a head naming request `n`, a filler shared by every body, and a tail."""

    def __init__(self, n: int, filler: bytes, size: int) -> None:
        self.head = b'{"model":"gpt-4o-mini","max_tokens":16,"messages":[{"role":"user",'
        self.head += b'"content":"request %d of the big-body run: ' % n
        self.tail = b'"}]}'
        self.filler = memoryview(filler)[: size - len(self.head) - len(self.tail)]
        if len(self.head) + len(self.filler) + len(self.tail) != size:
            raise ValueError(f"a filler of {len(filler)} bytes is too short for {size} B bodies")

    def __len__(self) -> int:
        return len(self.head) + len(self.filler) + len(self.tail)

    def __iter__(self) -> Iterator[bytes | memoryview]:
        yield self.head
        yield self.filler
        yield self.tail


def filler(size: int) -> bytes:
    """Plain words (nothing JSON escapes) of at least `size` bytes."""
    return _FILLER * (size // len(_FILLER) + 1)


def _post(url: str, auth: str, body: BigBody) -> str:
    """One request; its status, or how it failed (a refusal may close the connection while
    the body is still being sent, so the answer is read even after a broken pipe)."""
    hostport, _, path = url.removeprefix("http://").partition("/")
    conn = http.client.HTTPConnection(hostport, timeout=REQUEST_TIMEOUT_S)
    headers = {
        "Authorization": auth,
        "Content-Type": "application/json",
        "Content-Length": str(len(body)),
    }
    try:
        # After a broken pipe the answer may still be waiting in the socket.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            conn.request("POST", "/" + path, body=iter(body), headers=headers)
        try:
            answer = conn.getresponse()
            answer.read()
            return str(answer.status)
        except (OSError, http.client.HTTPException) as err:
            return type(err).__name__
    finally:
        conn.close()


def _burst(url: str, auth: str, shared: bytes) -> tuple[Counter[str], float]:
    """`CLIENTS` requests at once, one thread each; their outcomes and the burst's seconds."""
    outcomes: Counter[str] = Counter()
    lock = threading.Lock()
    start = threading.Barrier(CLIENTS)

    def client(n: int) -> None:
        body = BigBody(n, shared, BODY_BYTES)
        start.wait()
        outcome = _post(url, auth, body)
        with lock:
            outcomes[outcome] += 1

    threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(CLIENTS)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(REQUEST_TIMEOUT_S + 10)
    if any(thread.is_alive() for thread in threads):
        raise HarnessError(f"big-body clients still running after {REQUEST_TIMEOUT_S + 10:.0f} s")
    return outcomes, time.perf_counter() - started


def _mb(pids: list[int], field: str) -> float:
    return sum(status_kb(pid, field) for pid in pids) / 1024


def big_bodies_rss(bench: Bench) -> list[Row]:
    workdir = bench.workdir / "big-bodies"
    workdir.mkdir(exist_ok=True)
    with ExitStack() as stack:  # these servers hold ~1 GB between them: stop them at once
        upstream = start_fake_upstream(stack, workdir, name="fake-upstream-big-bodies")
        sidecar = start_sidecar(stack, workdir, redis_url=None, upstream=upstream)
        pid = sidecar.sidecar_pid
        before = _mb([pid], "VmRSS")
        outcomes, seconds = _burst(
            sidecar.sidecar + "/chat/completions", bench.auth, filler(BODY_BYTES)
        )
        sidecar.check_sidecar()
        peak = _mb([pid], "VmHWM")
        time.sleep(SETTLE_S)
        sidecar.check_sidecar()
        after = _mb([pid], "VmRSS")
        helpers = children(pid)
        helpers_mb = _mb(helpers, "VmRSS") if helpers else 0.0
    unexpected = {k: v for k, v in outcomes.items() if k not in ("200", "503")}
    answered = f"{outcomes['200']} x 200, {outcomes['503']} x 503"
    if unexpected:
        answered += ", " + ", ".join(f"{v} x {k}" for k, v in sorted(unexpected.items()))
    return [
        Row(
            f"RSS, {CLIENTS} concurrent {BODY_BYTES >> 20} MB bodies: peak / {SETTLE_S:.0f}s after",
            f"{peak:.0f} / {after:.0f} MB (idle {before:.0f} MB; {answered})",
            (Check("peak", peak, PEAK_MB, "MB"), Check("after", after, AFTER_MB, "MB")),
            data={
                "clients": CLIENTS,
                "body_bytes": BODY_BYTES,
                "vm_hwm_mb": peak,
                "vm_rss_after_mb": after,
                "vm_rss_before_mb": before,
                "helpers_rss_mb": helpers_mb,
                "outcomes": dict(outcomes),
                "seconds": seconds,
            },
        ),
        Row(
            "  burst time, the ledger writer's RSS (not counted above)",
            f"{seconds:.1f} s, {helpers_mb:.0f} MB",
        ),
    ]
