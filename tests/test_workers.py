"""`sidecache serve --workers 2` as a real process tree (docs/design.md §12): both workers serve
and `/metrics` sums them, a SIGKILLed worker is restarted, SIGTERM under load drains every
request and ledger row (SQLite shared by both workers, and PostgreSQL), admin invalidations and
breaker resets reach both workers, and a bad WORKERS stops start-up."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from proxy.ledger.records import pack
from proxy.ledger.sqlite import SqliteSink
from proxy.workers.merge import merge_expositions
from tests.fixtures.server_base import free_port
from tests.fixtures.sidecar import API_KEY, HttpAnswer, Stub, http_request
from tests.ledger_db import LedgerDb, assert_rollup_matches, make_records
from tests.test_cli import Served, launch, stop

START_TIMEOUT_S = 30.0
ADMIN_TOKEN = "admin-token-0123456789abcdef"
MODEL = "gpt-4o-mini"
Series = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def chat_body(content: str) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": content}]}


class Workers(Served):
    """A running `python -m proxy serve --workers 2`; every request on a new connection, so
    the kernel spreads them over both workers."""

    def chat(self, content: str) -> HttpAnswer:
        return http_request(self.url.removesuffix("/v1"), "POST", "/v1/chat/completions",
                            chat_body(content))  # fmt: skip

    def admin_post(self, path: str, body: dict[str, Any]) -> HttpAnswer:
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        return http_request(self.admin, "POST", f"/api/admin/dashboard/{path}", body, headers)

    def metrics(self) -> Series:
        answer = self.admin_get("/metrics")
        assert answer.status == 200
        return {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(answer.body.decode())
            for sample in family.samples
        }

    def worker_pids(self) -> list[int]:
        """The supervisor's children: its workers."""
        pid = self.proc.pid
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text()
        return sorted(int(child) for child in children.split())


def total(series: Series, name: str, **labels: str) -> float:
    wanted = set(labels.items())
    return sum(value for (n, got), value in series.items() if n == name and wanted <= set(got))


def wait_for(what: str, check: Callable[[], bool], workers: Workers) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if workers.proc.poll() is not None:
            pytest.fail(f"the supervisor exited with {workers.proc.returncode}: {workers.stderr()}")
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.1)
    pytest.fail(f"{what} not within {START_TIMEOUT_S} s: {workers.stderr()}")


def both_serving(workers: Workers) -> bool:
    return total(workers.metrics(), "sidecache_workers") == 2


@pytest.fixture
def start_workers(tmp_path: Path, stub: Stub) -> Iterator[Callable[..., Workers]]:
    """`start_workers(**env)`: `serve --workers 2` in front of `stub`, both workers serving."""
    started: list[Workers] = []

    def start(**env: str) -> Workers:
        port, admin = free_port(), free_port()
        proc, log = launch(
            tmp_path, "--workers", "2", UPSTREAM_BASE_URL=stub.url, PROXY_HOST="127.0.0.1",
            PROXY_PORT=str(port), ADMIN_PORT=str(admin), ADMIN_TOKENS=ADMIN_TOKEN, **env,
        )  # fmt: skip
        workers = Workers(proc, log, port, admin)
        started.append(workers)
        wait_for("both workers serving", lambda: both_serving(workers), workers)
        return workers

    yield start
    for workers in started:
        if workers.proc.poll() is None:  # drained, so the supervisor removes its run directory
            workers.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                workers.proc.wait(60)
        stop(workers.proc)
        workers.log.close()


def test_both_workers_serve_and_metrics_sum_them(start_workers: Any, stub: Stub) -> None:
    workers: Workers = start_workers()
    answers = [workers.chat("Name the planets.") for _ in range(40)]
    assert [a.status for a in answers] == [200] * 40
    # The memory cache is per worker: each worker misses once, then hits.
    assert sum(a.headers["x-cache"] == "MISS" for a in answers) == 2
    assert stub.calls == 2
    for _ in range(4):  # whichever worker a scrape lands on, it sums both
        series = workers.metrics()
        assert total(series, "sidecache_requests_total") == 40
        assert total(series, "sidecache_requests_total", cache="HIT") == 38
        assert total(series, "sidecache_workers") == 2
        shares = [total(series, "sidecache_worker_requests_total", worker=w) for w in "01"]
        assert min(shares) > 0 and sum(shares) == 40


def test_a_killed_worker_is_restarted(start_workers: Any) -> None:
    workers: Workers = start_workers()
    before = workers.worker_pids()
    assert len(before) == 2
    victim = before[0]
    os.kill(victim, signal.SIGKILL)
    wait_for("a new worker", lambda: restarted(workers.worker_pids(), victim), workers)
    wait_for("both workers serving again", lambda: both_serving(workers), workers)
    assert all(workers.chat(f"Question {i}").status == 200 for i in range(20))
    assert f"(pid {victim}) exited with -9; restarting" in workers.stderr()


def restarted(pids: list[int], victim: int) -> bool:
    return len(pids) == 2 and victim not in pids


async def _send(session: aiohttp.ClientSession, url: str, content: str) -> int:
    async with session.post(
        url, json=chat_body(content), headers={"Authorization": f"Bearer {API_KEY}"}
    ) as answer:
        await answer.read()
        return answer.status


@pytest.mark.parametrize("ledger", ["sqlite", "postgres"])
async def test_sigterm_under_load_drains_every_request_and_row(
    start_workers: Any, stub: Stub, tmp_path: Path, ledger: str, request: pytest.FixtureRequest
) -> None:
    env = {"UPSTREAM_MAX_IN_FLIGHT": "512", "LEDGER_FLUSH_INTERVAL_S": "0.5"}
    if ledger == "postgres":
        env["DATABASE_URL"] = request.getfixturevalue("postgres_dsn")
    workers: Workers = await asyncio.to_thread(start_workers, **env)
    warm = [f"Warm question {i}" for i in range(5)]
    for content in warm * 20:  # each cached by both workers (all but certainly)
        assert (await asyncio.to_thread(workers.chat, content)).status == 200
    stub.fake.latency_ms = 1000  # the misses are in flight when SIGTERM arrives
    calls_before = stub.calls
    contents = [warm[i % 5] for i in range(150)] + [f"Fresh question {i}" for i in range(150)]
    finished = 0

    async def send(session: aiohttp.ClientSession, content: str) -> int:
        nonlocal finished
        try:
            return await _send(session, f"{workers.url}/chat/completions", content)
        finally:
            finished += 1

    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        sent = [asyncio.create_task(send(session, content)) for content in contents]
        # SIGTERM once every request is answered or waiting on the upstream: all in flight.
        deadline = time.monotonic() + START_TIMEOUT_S
        while finished + stub.calls - calls_before < len(contents):
            assert time.monotonic() < deadline, workers.stderr()
            await asyncio.sleep(0.01)
        in_flight = len(contents) - finished
        workers.proc.send_signal(signal.SIGTERM)
        statuses = await asyncio.gather(*sent, return_exceptions=True)
    assert in_flight >= 100  # the fresh questions, at least
    assert statuses == [200] * len(contents)
    assert await asyncio.to_thread(workers.proc.wait, 60) == 0
    assert "supervisor: stopped" in workers.stderr()
    target = env.get("DATABASE_URL") or str(tmp_path / "ledger.db")
    assert await LedgerDb(ledger, target).count() == len(warm) * 20 + len(contents)


@pytest.mark.parametrize("store", ["memory", "redis"])
def test_admin_invalidation_and_breaker_reset_reach_every_worker(
    start_workers: Any, stub: Stub, store: str, request: pytest.FixtureRequest
) -> None:
    env = {"BREAKER_FAIL_MAX": "2", "BREAKER_RESET_S": "600"}
    if store == "redis":
        env["REDIS_URL"] = request.getfixturevalue("redis_url")
    workers: Workers = start_workers(**env)
    # The memory store is per worker: each worker misses once. Redis is shared: one miss.
    misses = 2 if store == "memory" else 1
    primed = [workers.chat("What is a noun?").headers["x-cache"] for _ in range(30)]
    assert primed.count("MISS") == misses

    answer = workers.admin_post("cache/invalidate", {"selectors": [{"model": MODEL}]})
    assert answer.status == 200
    after = [workers.chat("What is a noun?").headers["x-cache"] for _ in range(30)]
    assert after.count("MISS") == misses  # invalidated for both workers, not only the one asked

    stub.fake.fail_status, stub.fake.fail_next = 500, 10_000
    for i in range(60):  # until both workers' breakers opened
        workers.chat(f"Failing question {i}")
        if total(workers.metrics(), "sidecache_breaker_opened_total") >= 2:
            break
    assert total(workers.metrics(), "sidecache_breaker_opened_total") == 2
    assert workers.chat("Refused question").status == 503
    stub.fake.fail_next = 0
    assert workers.admin_post("circuits/reset", {}).status == 200
    statuses = [workers.chat(f"After the reset {i}").status for i in range(20)]
    assert statuses == [200] * 20  # no worker's breaker stayed open
    assert total(workers.metrics(), "sidecache_breaker_state") == 0


def test_a_warming_job_is_found_whichever_worker_is_asked(start_workers: Any) -> None:
    workers: Workers = start_workers()
    question = {"endpoint": "chat.completions", "body": chat_body("Explain photosynthesis.")}
    warm = {"api_key": API_KEY, "requests": [question]}
    started = workers.admin_post("cache/warm", warm)
    assert started.status == 202
    job = started.json()["id"]
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    path = "/api/admin/dashboard/cache/warm"
    for _ in range(10):  # each on a new connection: both workers answer some
        found = http_request(workers.admin, "GET", f"{path}/{job}", headers=headers)
        assert found.status == 200 and found.json()["id"] == job
        listed = http_request(workers.admin, "GET", path, headers=headers)
        assert [j["id"] for j in listed.json()["jobs"]] == [job]
    missing = http_request(workers.admin, "GET", f"{path}/warm_0000000000000000", headers=headers)
    assert missing.status == 404


@pytest.mark.parametrize(
    ("args", "env"),
    [((), {"WORKERS": "0"}), ((), {"WORKERS": "two"}), (("--workers", "-1"), {})],
)
def test_bad_workers_stops_start_up(
    tmp_path: Path, args: tuple[str, ...], env: dict[str, str]
) -> None:
    proc, log = launch(tmp_path, *args, **env)
    try:
        assert proc.wait(30) == 2
    finally:
        stop(proc)
    log.seek(0)
    lines = log.read().decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sidecache: invalid setting WORKERS=")


def test_a_taken_port_stops_the_supervisor(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        proc, log = launch(tmp_path, "--workers", "2", PROXY_HOST="127.0.0.1",
                           PROXY_PORT=str(port), ADMIN_PORT=str(free_port()))  # fmt: skip
        try:
            assert proc.wait(30) == 1
        finally:
            stop(proc)
    log.seek(0)
    assert f"cannot listen on 127.0.0.1:{port} (PROXY_PORT)" in log.read().decode()


async def test_two_sinks_share_one_sqlite_file_without_losing_a_row(tmp_path: Path) -> None:
    """What two workers do to one LEDGER_PATH: both migrate at once (one applies the
    migrations, the other finds them applied), then both write batches at the same time."""
    db = LedgerDb("sqlite", str(tmp_path / "ledger.db"))
    sinks = [SqliteSink(db.target, migrate=False) for _ in range(2)]
    applied = await asyncio.gather(*(sink.migrate() for sink in sinks))
    assert sorted(map(len, applied))[0] == 0 and max(map(len, applied)) > 0
    records = [list(map(pack, make_records(1500, seed=seed))) for seed in (41, 42)]

    async def write_all(sink: SqliteSink, packed: list[bytes]) -> int:
        return sum([await sink.write(packed[i : i + 100]) for i in range(0, len(packed), 100)])

    written = await asyncio.gather(*(write_all(s, r) for s, r in zip(sinks, records, strict=True)))
    for sink in sinks:
        await sink.close()
    assert written == [1500, 1500]
    assert await db.count() == 3000
    for per in ("user", "tenant"):
        assert_rollup_matches(await db.rollup(per), await db.grouped(per))


def test_merged_metrics_sum_amounts_and_keep_the_worst_state() -> None:
    def exposition(requests: float, breaker: float, up: float, created: float) -> str:
        return (
            "# TYPE sidecache_requests counter\n"
            f'sidecache_requests_total{{endpoint="chat"}} {requests}\n'
            "# TYPE sidecache_requests_created gauge\n"
            f'sidecache_requests_created{{endpoint="chat"}} {created}\n'
            "# TYPE sidecache_breaker_state gauge\n"
            f'sidecache_breaker_state{{breaker="chat"}} {breaker}\n'
            "# TYPE sidecache_cache_backend_up gauge\n"
            f'sidecache_cache_backend_up{{backend="redis"}} {up}\n'
            "# TYPE sidecache_upstream_in_flight gauge\n"
            "sidecache_upstream_in_flight 3\n"
        )

    merged = merge_expositions({0: exposition(5, 0, 1, 200), 1: exposition(7, 2, 0, 100)})
    series = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(merged.decode())
        for s in family.samples
    }
    assert total(series, "sidecache_requests_total") == 12
    assert total(series, "sidecache_requests_created") == 100  # the earliest
    assert total(series, "sidecache_breaker_state") == 2  # open in one worker: open
    assert total(series, "sidecache_cache_backend_up") == 0  # down in one worker: down
    assert total(series, "sidecache_upstream_in_flight") == 6
    assert total(series, "sidecache_workers") == 2
    assert total(series, "sidecache_worker_requests_total", worker="1") == 7
