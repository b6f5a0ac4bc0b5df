"""Running the load generators (hey, wrk) and refusing results that did not measure answers."""

from __future__ import annotations

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
    argv = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "-s", str(HIT_LUA)]
    out = _run([*argv, url, "--", str(body), auth], timeout_s=seconds + SLACK_S)
    try:
        result = parse_wrk(out)
    except ParseError as err:
        raise HarnessError(f"{err}:\n{out[-800:]}") from err
    if result.errors.total or result.requests == 0:
        raise HarnessError(f"wrk: {result.requests} requests, errors {result.errors}")
    return result
