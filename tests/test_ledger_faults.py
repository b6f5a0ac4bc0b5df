"""The ledger end to end under faults (issue 4): PostgreSQL stopped in the middle of a run and
started again, down when the sidecar starts, and SIGTERM in the middle of a load: every request
answered, still exactly one row per answered request, none twice, nothing left in the journal."""

from __future__ import annotations

import asyncio
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.fixtures.server_base import free_port
from tests.fixtures.servers import PostgresServer
from tests.fixtures.sidecar import LoopThread, SidecarFactory
from tests.ledger_db import LedgerDb, assert_rollup_matches
from tests.test_cli import Served, launch, stop, wait_healthy
from tests.test_ledger_e2e import chat, flush, user

LOAD_REQUESTS = 200
LOAD_THREADS = 8


async def test_postgres_stopped_mid_run_loses_and_doubles_nothing(
    make_sidecar: SidecarFactory, loop_thread: LoopThread, private_postgres: PostgresServer
) -> None:
    dsn = private_postgres.dsn
    sidecar = make_sidecar(DATABASE_URL=dsn, LEDGER_FLUSH_INTERVAL_S="0.05")
    client = sidecar.aclient()
    sent = 0

    async def ask(count: int) -> None:
        nonlocal sent
        for _ in range(count):
            # Every third question repeats: hits as well as misses.
            status, _ = await chat(client, f"Fact number {sent % 7}?", user(sent % 50))
            assert status in ("MISS", "HIT")
            sent += 1

    await ask(30)
    # Requests go on while the server stops.
    await asyncio.gather(asyncio.to_thread(private_postgres.stop), ask(30))
    await ask(20)
    flush(loop_thread, sidecar)
    ready = sidecar.request("GET", "/readyz")
    assert (ready.status, ready.json()["status"]) == (200, "degraded")
    assert ready.json()["ledger"]["reachable"] is False
    assert ready.json()["ledger"]["journal_pending"] > 0
    assert sidecar.runtime.ledger.stats.journal_pending > 0

    await asyncio.to_thread(private_postgres.start)
    await ask(30)
    flush(loop_thread, sidecar)
    stats = sidecar.runtime.ledger.stats
    assert (stats.sink_up, stats.journal_pending, stats.queued) == (True, 0, 0)
    assert stats.journaled > 0 and stats.replayed >= stats.journaled
    assert (stats.dropped, stats.rejected) == (0, 0)
    assert sidecar.request("GET", "/readyz").json()["status"] == "ready"

    db = LedgerDb("postgres", dsn)
    assert await db.count() == sent == 110  # count() also checks that no id is there twice
    assert_rollup_matches(await db.rollup(), await db.grouped())


@pytest.fixture(params=["postgres", "sqlite"])
def served_ledger(
    request: pytest.FixtureRequest, tmp_path: Path
) -> tuple[dict[str, str], LedgerDb]:
    if request.param == "postgres":
        dsn = request.getfixturevalue("postgres_dsn")
        return {"DATABASE_URL": dsn}, LedgerDb("postgres", dsn)
    return {}, LedgerDb("sqlite", str(tmp_path / "ledger.db"))  # test_cli.launch's LEDGER_PATH


def _load(served: Served, answered: list[int], started: threading.Event) -> list[Any]:
    """LOAD_REQUESTS chat requests from LOAD_THREADS threads; returns what each one got."""
    client = openai.OpenAI(base_url=served.url, api_key="sk-load", max_retries=0, timeout=10)
    lock = threading.Lock()

    def one(n: int) -> Any:
        started.set()
        try:
            answer = client.chat.completions.create(
                model="gpt-4o-mini",
                messages=[{"role": "user", "content": f"Load question {n % 40}?"}],
                max_tokens=5,
            )
        except (openai.APIConnectionError, openai.APIStatusError) as exc:
            return exc
        with lock:
            answered.append(n)
        return answer

    with ThreadPoolExecutor(LOAD_THREADS) as pool:
        return list(pool.map(one, range(LOAD_REQUESTS)))


async def test_sigterm_during_load_loses_no_row(
    tmp_path: Path, served_ledger: tuple[dict[str, str], LedgerDb]
) -> None:
    env, db = served_ledger
    port, admin = free_port(), free_port()
    proc, log = launch(
        tmp_path,
        "--upstream",
        "fake",
        PROXY_HOST="127.0.0.1",
        PROXY_PORT=str(port),
        ADMIN_PORT=str(admin),
        LOG_LEVEL="INFO",
        # No timed flush before the shutdown: every row must come from the one it does.
        LEDGER_FLUSH_INTERVAL_S="600",
        **env,
    )
    served = Served(proc, log, port, admin)
    try:
        wait_healthy(served)
        answered: list[int] = []
        started = threading.Event()
        load = asyncio.ensure_future(asyncio.to_thread(_load, served, answered, started))
        while len(answered) < LOAD_REQUESTS // 3:
            assert not load.done(), "the load ended before SIGTERM"
            await asyncio.sleep(0.002)
        proc.send_signal(signal.SIGTERM)
        results = await load
        assert await asyncio.to_thread(proc.wait, 20) == 0
    finally:
        stop(proc)
    text = served.stderr()
    log.close()
    failed = [r for r in results if isinstance(r, Exception)]
    assert failed, "SIGTERM came after the load"
    assert LOAD_REQUESTS // 3 <= len(answered) == LOAD_REQUESTS - len(failed)
    assert all(isinstance(r, openai.APIConnectionError) for r in failed), failed[:3]
    assert await db.count() == len(answered), text[-2000:]
    assert_rollup_matches(await db.rollup(), await db.grouped())
    journal = tmp_path / "ledger.ledger-journal"
    assert not journal.exists() or journal.stat().st_size == 0
    assert "stopped" in text.splitlines()[-1]


async def test_a_database_down_at_start_costs_no_answer(
    make_sidecar: SidecarFactory,
    loop_thread: LoopThread,
    private_postgres: PostgresServer,
) -> None:
    dsn = private_postgres.dsn
    await asyncio.to_thread(private_postgres.stop)
    sidecar = make_sidecar(DATABASE_URL=dsn)
    client = sidecar.aclient()
    for n in range(5):
        status, answer = await chat(client, f"Tell me fact {n % 2}.", user(n))
        assert status == ("MISS" if n < 2 else "HIT") and answer.choices[0].message.content
    flush(loop_thread, sidecar)
    ready = sidecar.request("GET", "/readyz")
    assert ready.status == 200
    assert ready.json()["status"] == "degraded"
    assert ready.json()["ledger"]["reachable"] is False
    assert sidecar.runtime.ledger.stats.journal_pending == 5

    await asyncio.to_thread(private_postgres.start)
    flush(loop_thread, sidecar)
    stats = sidecar.runtime.ledger.stats
    assert (stats.journal_pending, stats.replayed, stats.sink_up) == (0, 5, True)
    assert await LedgerDb("postgres", dsn).count() == 5
