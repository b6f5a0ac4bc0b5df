"""Running the load generators (hey, wrk) and refusing results that did not measure answers."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from .parse import HeyResult, ParseError, WrkResult, parse_hey, parse_wrk
from .procs import REPO, HarnessError

HIT_LUA = REPO / "bench" / "hit.lua"
REQUIRED_TOOLS = ("hey", "wrk", "redis-server")
SLACK_S = 30.0


def missing_tools() -> list[str]:
    return [tool for tool in REQUIRED_TOOLS if shutil.which(tool) is None]


def _run(argv: Sequence[str], timeout_s: float) -> str:
    try:
        done = subprocess.run(
            list(argv),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired as err:
        raise HarnessError(f"{argv[0]} did not finish in {timeout_s:.0f} s") from err
    if done.returncode != 0:
        raise HarnessError(
            f"{argv[0]} exited with status {done.returncode}: {done.stderr.strip()[-500:]}"
        )
    return done.stdout


def hey(
    url: str,
    body: Path,
    *,
    n: int,
    c: int,
    q: int,
    headers: Sequence[str],
) -> HeyResult:
    """`n` POSTs of `body` from `c` workers, each paced at `q` req/s (hey's -q is per worker).
    Every request must get a 200."""
    argv = ["hey", "-n", str(n), "-c", str(c), "-q", str(q), "-m", "POST"]
    argv += ["-T", "application/json", "-D", str(body)]
    for header in headers:
        argv += ["-H", header]
    expected_s = n / (c * q)
    out = _run([*argv, url], timeout_s=expected_s * 1.5 + SLACK_S)
    try:
        result = parse_hey(out)
    except ParseError as err:
        raise HarnessError(f"{err}:\n{out[-800:]}") from err
    bad = {status: count for status, count in result.statuses.items() if status != 200}
    if bad or result.errors or result.responses != n:
        raise HarnessError(
            f"hey got {result.responses}/{n} answers, non-200 {bad}, {result.errors} errors"
        )
    return result


def wrk(
    url: str, body: Path, *, auth: str, threads: int, connections: int, seconds: int
) -> WrkResult:
    """Repeats one POST as fast as `connections` keep-alive connections allow (bench/hit.lua).
    Every answer must be a 2xx/3xx and no connection may fail."""
    argv = _wrk_argv(
        url, body, auth=auth, threads=threads, connections=connections, seconds=seconds
    )
    return _wrk_result(_run(argv, timeout_s=seconds + SLACK_S))


def wrk_together(
    urls: Sequence[str], body: Path, *, auth: str, connections: int, seconds: int, cpus: set[int]
) -> list[WrkResult]:
    """One `wrk -t1` per URL, all at once and all on `cpus`, so the servers are measured at the
    same moment on the same machine; checked as `wrk`'s. In `urls`' order."""
    argv = [
        _wrk_argv(url, body, auth=auth, threads=1, connections=connections, seconds=seconds)
        for url in urls
    ]
    procs = [
        subprocess.Popen(
            one,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=lambda: os.sched_setaffinity(0, cpus),
        )
        for one in argv
    ]
    outs = []
    for proc in procs:
        try:
            out, err = proc.communicate(timeout=seconds + SLACK_S)
        except subprocess.TimeoutExpired as exc:
            for each in procs:
                each.kill()
            raise HarnessError(f"wrk did not finish in {seconds + SLACK_S:.0f} s") from exc
        if proc.returncode != 0:
            raise HarnessError(f"wrk exited with status {proc.returncode}: {err.strip()[-500:]}")
        outs.append(out)
    return [_wrk_result(out) for out in outs]


def _wrk_argv(
    url: str, body: Path, *, auth: str, threads: int, connections: int, seconds: int
) -> list[str]:
    argv = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "-s", str(HIT_LUA)]
    return [*argv, url, "--", str(body), auth]


def _wrk_result(out: str) -> WrkResult:
    try:
        result = parse_wrk(out)
    except ParseError as err:
        raise HarnessError(f"{err}:\n{out[-800:]}") from err
    if result.errors.total or result.requests == 0:
        raise HarnessError(f"wrk: {result.requests} requests, errors {result.errors}")
    return result
