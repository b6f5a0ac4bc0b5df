"""The system under test: a private Redis, the fake upstream and the sidecar, started and warmed.

`Bench` is what every measurement function receives. Measurements that need more servers (for
example a rate-limited stub) start them with `start_fake_upstream(bench.stack, ...)`.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

from . import loadgen
from .floor import DICT_STORE
from .procs import (
    REPO,
    HarnessError,
    answers_200,
    clean_env,
    free_port,
    log_tail,
    redis_ping,
    request,
    spawn,
    wait_until,
)
from .worktree import Revision, proxy_imported_from

if TYPE_CHECKING:
    from .costs import LoadedLedger  # costs imports Bench from here

AUTH = "Bearer sk-bench"
# Settings that would change what is measured if they leaked in from the caller's environment.
SETTING_NAMES = (
    "SIDECACHE_CONFIG",
    "UPSTREAM_BASE_URL",
    "UPSTREAM_API_KEY",
    "REDIS_URL",
    "DATABASE_URL",
    "PROXY_HOST",
    "PROXY_PORT",
    "ADMIN_HOST",
    "ADMIN_PORT",
    "ADMIN_TOKENS",
    "ADMIN_USER_IDS",
    "SIDECAR_KEYS",
    "AI_BATCH_SIZE",
    "AI_BATCH_WAIT_MS",
    "CACHE_DEFAULT_TTL",
    "CACHE_MEMORY_MB",
    "LEDGER_PATH",
    "ALERT_WEBHOOK_URL",
    "MAX_BODY_MB",
    "LOG_LEVEL",
    "MAX_INFLIGHT_BODY_MB",
    "UPSTREAM_MAX_IN_FLIGHT",
    "UPSTREAM_QUEUE_TIMEOUT",
    "UPSTREAM_TOTAL_TIMEOUT",
    "BUDGET_TENANT_DAILY_USD",
    "BUDGET_TENANT_MONTHLY_USD",
    "BUDGET_USER_DAILY_USD",
    "BUDGET_USER_MONTHLY_USD",
    "LEDGER_ENABLED",
    "LEDGER_FLUSH_INTERVAL_S",
    "NEAR_CACHE_MB",
)
_LISTENING = re.compile(r"listening on (http://\S+/v1)")


def chat_body() -> bytes:
    """A ~600 B chat request whose answer from the fake upstream is ~1.2 KB (105 words)."""
    body = {
        "model": "gpt-4o-mini",
        "messages": [
            {
                "role": "system",
                "content": "You are a patient tutor for adult learners. Explain ideas in short, "
                "clear steps, give one concrete example for each step, and finish with a single "
                "question that checks understanding. Keep the tone warm and direct, avoid jargon "
                "unless you define it first.",
            },
            {
                "role": "user",
                "content": "Can you explain how a cache in front of an API saves money and "
                "time? I run a small learning app that calls a language model for every lesson "
                "summary, and many learners ask for the same summaries.",
            },
        ],
        "max_tokens": 105,
        "temperature": 0,
    }
    return msgspec.json.encode(body)


@dataclass
class Bench:
    """Everything a measurement needs: URLs, the request body, the sidecar's pid and a scale
    factor for request counts and durations (1.0 for the real run)."""

    workdir: Path
    stack: ExitStack
    scale: float
    upstream: str  # the fake upstream's base URL, ending in /v1
    sidecar: str  # the sidecar's base URL, ending in /v1
    admin: str  # the admin port's root URL
    redis_url: str  # "" when the sidecar runs on the in-process memory store
    sidecar_proc: subprocess.Popen[bytes]
    sidecar_log: Path
    body: Path
    proxy_file: Path  # the sidecar's `proxy/__init__.py`: which source tree it runs
    auth: str = AUTH
    baseline: Revision | None = None  # `--baseline REV`: compared with by bench/versus.py
    # Generated PostgreSQL ledgers by row count (bench/costs.py's loaded_ledger): loaded once
    # per run, read by the costs and report_time rows.
    ledgers: dict[int, LoadedLedger] = field(default_factory=dict)

    @property
    def answer(self) -> Path:
        """The cached answer's body, saved by `warm_cache`."""
        return self.workdir / "answer.json"

    @property
    def sidecar_pid(self) -> int:
        return self.sidecar_proc.pid

    def check_sidecar(self) -> None:
        """Raises HarnessError, with the end of the sidecar's log, if it has exited."""
        if self.sidecar_proc.poll() is not None:
            raise HarnessError(
                f"the sidecar exited with status {self.sidecar_proc.returncode}:\n"
                + log_tail(self.sidecar_log, 30)
            )

    def count(self, n: int) -> int:
        return max(int(n * self.scale), 100)

    def seconds(self, s: int) -> int:
        return max(round(s * self.scale), 1)

    def upstream_calls(self) -> int:
        """Requests the fake upstream has received (its /_fake/stats counter)."""
        answer = request("GET", self.upstream.removesuffix("/v1") + "/_fake/stats")
        calls: int = msgspec.json.decode(answer.body)["total_calls"]
        return calls


def start_redis(stack: ExitStack, workdir: Path) -> str:
    port = free_port()
    log = workdir / "redis.log"
    argv = ["redis-server", "--bind", "127.0.0.1", "--port", str(port)]
    argv += ["--save", "", "--appendonly", "no", "--dir", str(workdir)]
    proc = spawn(stack, argv, log)
    wait_until(lambda: redis_ping(port), what="redis-server", proc=proc, log=log)
    return f"redis://127.0.0.1:{port}/0"


def start_fake_upstream(
    stack: ExitStack,
    workdir: Path,
    *,
    latency_ms: float = 0.0,
    max_concurrency: int | None = None,
    name: str = "fake-upstream",
) -> str:
    """Starts `python -m proxy.fake_upstream` on a free port; returns its base URL (…/v1)."""
    log = workdir / f"{name}.log"
    argv = [sys.executable, "-m", "proxy.fake_upstream", "--host", "127.0.0.1", "--port", "0"]
    argv += ["--latency-ms", str(latency_ms)]
    if max_concurrency is not None:
        argv += ["--max-concurrency", str(max_concurrency)]
    proc = spawn(stack, argv, log)
    found: list[str] = []

    def listening() -> bool:
        match = _LISTENING.search(log.read_text(errors="replace"))
        if match is not None:
            found.append(match.group(1))
        return match is not None

    wait_until(listening, what=name, proc=proc, log=log)
    return found[0]


@dataclass(frozen=True)
class Floor:
    """A running bench/floor.py server."""

    url: str  # its chat completions URL
    proc: subprocess.Popen[bytes]
    log: Path

    def check(self) -> None:
        """Raises HarnessError, with the end of its log, if it has exited."""
        if self.proc.poll() is not None:
            raise HarnessError(
                f"the floor server exited with status {self.proc.returncode}:\n"
                + log_tail(self.log, 30)
            )


def spawn_floor(stack: ExitStack, bench: Bench, *, store: str | None = None) -> Floor:
    """Starts bench/floor.py (a minimal hit server) on a free port, answering from the bench's
    Redis or from `store` (`floor.DICT_STORE` for an in-process dict); `stack` stops it."""
    store = store or bench.redis_url
    port = free_port()
    log = bench.workdir / f"floor-{'dict' if store == DICT_STORE else 'redis'}-{port}.log"
    argv = [sys.executable, "-m", "bench.floor", store, str(port)]
    proc = spawn(stack, [*argv, str(bench.answer), str(bench.body)], log)
    wait_until(
        lambda: "floor listening" in log.read_text(), what="floor server", proc=proc, log=log
    )
    return Floor(f"http://127.0.0.1:{port}/v1/chat/completions", proc, log)


def start_floor(stack: ExitStack, bench: Bench) -> str:
    """Starts bench/floor.py on the bench's Redis (the minimal hit server); returns its chat URL."""
    return spawn_floor(stack, bench).url


def start_sidecar(
    stack: ExitStack,
    workdir: Path,
    *,
    redis_url: str | None,
    upstream: str,
    source: Path = REPO,
    settings: Mapping[str, str] | None = None,
) -> Bench:
    """`python -m proxy serve` from the `proxy` package of `source` (this checkout, or another
    revision's worktree): started there with `source` first on PYTHONPATH, which is checked.
    `redis_url=None` runs it on the in-process memory store; `settings` adds environment
    settings (e.g. a budget) over the bench's."""
    proxy_port, admin_port = free_port(), free_port()
    python_path = [str(source), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = clean_env(
        {
            "PROXY_HOST": "127.0.0.1",
            "PROXY_PORT": str(proxy_port),
            "ADMIN_HOST": "127.0.0.1",
            "ADMIN_PORT": str(admin_port),
            **({"REDIS_URL": redis_url} if redis_url else {}),
            "UPSTREAM_BASE_URL": upstream,
            "LEDGER_PATH": str(workdir / "ledger.db"),
            "LOG_LEVEL": "WARNING",
            "PYTHONPATH": os.pathsep.join(python_path),
            **(settings or {}),
        },
        drop=SETTING_NAMES,
    )
    proxy_file = proxy_imported_from(source, env)
    log = workdir / "sidecar.log"
    proc = spawn(stack, [sys.executable, "-m", "proxy", "serve"], log, env, cwd=source)
    admin = f"http://127.0.0.1:{admin_port}"
    wait_until(lambda: answers_200(admin + "/readyz"), what="sidecar", proc=proc, log=log)
    body = workdir / "chat.json"
    body.write_bytes(chat_body())
    return Bench(
        workdir=workdir,
        stack=stack,
        scale=1.0,
        upstream=upstream,
        redis_url=redis_url or "",
        sidecar=f"http://127.0.0.1:{proxy_port}/v1",
        admin=admin,
        sidecar_proc=proc,
        sidecar_log=log,
        body=body,
        proxy_file=proxy_file,
    )


def warm_cache(bench: Bench) -> None:
    """Stores the bench answer, checks the next request is a HIT, then runs a short unpaced
    burst so connection pools and allocator arenas are warm before anything is timed."""
    url = bench.sidecar + "/chat/completions"
    headers = {"Authorization": bench.auth, "Content-Type": "application/json"}
    caches = []
    for _ in range(2):
        answer = request("POST", url, body=bench.body.read_bytes(), headers=headers)
        if answer.status != 200:
            raise HarnessError(f"warm-up request got {answer.status}: {answer.body[:300]!r}")
        caches.append(answer.headers.get("x-cache", "(no X-Cache header)"))
    if caches[1] != "HIT":
        raise HarnessError(f"no cache hit after warm-up: X-Cache was {caches}")
    bench.answer.write_bytes(answer.body)
    before = bench.upstream_calls()
    loadgen.hey(
        url,
        bench.body,
        n=bench.count(2000),
        c=4,
        q=100_000,
        headers=[f"Authorization: {bench.auth}"],
    )
    if bench.upstream_calls() != before:
        raise HarnessError("the warm-up burst reached the upstream: the cached entry is not used")
