"""Redis behind Sentinel (issue 15, item 2): `redis+sentinel://` finds the primary, the basic
hit/miss/invalidation cases pass on it (the existing tests, re-collected with this module's
`any_sidecar` / `any_admin_sidecar`), and a failover under steady load — the primary killed, or
a `SENTINEL FAILOVER` — costs no 5xx: misses while there is no primary, hits again after the
promotion (the lean pipe, redis-py's pool, the pub/sub listeners and the near cache's tracking
all follow the new primary), and every request has its ledger row."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import openai
import pytest

from proxy.cache.pipe import PipeError, RedisPipe
from proxy.cache.redis_link import RedisLink
from proxy.vocabulary import FLIGHTS_CHANNEL, INVALIDATION_CHANNEL
from tests.admin_support import TOKENS
from tests.fixtures.redis_sentinel import DOWN_AFTER_MS, SENTINEL_PASSWORD, SERVICE, SentinelGroup
from tests.fixtures.redis_server import RedisServer
from tests.fixtures.redis_tls import PASSWORD, Pki
from tests.fixtures.replicas import Replica
from tests.fixtures.server_base import free_port
from tests.fixtures.sidecar import Sidecar, SidecarFactory, Stub
from tests.test_chat_cache import test_completions_endpoint_both_ways, test_who_shares_an_entry
from tests.test_invalidation import (
    test_an_invalidated_persona_misses_and_others_still_hit,
    test_invalidate_all_and_by_endpoint,
)
from tests.test_near_cache_replicas import near_hits
from tests.test_redis_tls import _start_and_fail, test_the_near_cache_is_armed_and_serves_hits

# Collected here too, with this module's fixtures: parametrised, not copied.
REUSED = (
    test_who_shares_an_entry,
    test_completions_endpoint_both_ways,
    test_an_invalidated_persona_misses_and_others_still_hit,
    test_invalidate_all_and_by_endpoint,
    test_the_near_cache_is_armed_and_serves_hits,
)
RECOVERY_S = 30.0  # generous: hits must be back within this after the promotion
REPEATED = [f"Sentinel question {n}?" for n in range(4)]
WORKERS = 4
NAMES = ("a", "b")


@pytest.fixture(params=["plain", "tls+acl"])
def sentinel_env(request: pytest.FixtureRequest) -> dict[str, str]:
    """A sidecar's Redis settings: Sentinel in front of plain servers; or TLS everywhere
    (sentinels and servers), an ACL user and a sentinel password. The primary is empty."""
    name = "sentinel_group" if request.param == "plain" else "tls_sentinel_group"
    group: SentinelGroup = request.getfixturevalue(name)
    group.flushall()
    return group.env()


@pytest.fixture
def any_sidecar(make_sidecar: SidecarFactory, sentinel_env: dict[str, str]) -> Sidecar:
    return make_sidecar(**sentinel_env)


@pytest.fixture
def any_admin_sidecar(make_sidecar: SidecarFactory, sentinel_env: dict[str, str]) -> Sidecar:
    return make_sidecar(ADMIN_TOKENS=TOKENS, **sentinel_env)


def test_the_sidecar_talks_to_the_primary_the_sentinels_name(
    make_sidecar: SidecarFactory, sentinel_group: SentinelGroup, sentinel_url: str
) -> None:
    sidecar = make_sidecar(REDIS_URL=sentinel_url)
    client = sidecar.client()
    client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "Where am I stored?"}]
    )
    primary = sentinel_group.primary()
    with primary.client() as conn:
        assert conn.dbsize() >= 1  # the entry was written to the primary
    with sentinel_group.nodes[1].client() as replica:
        assert replica.info("replication")["role"] == "slave"


@dataclass(frozen=True)
class Sample:
    replica: int
    started: float
    ended: float
    status: int
    cache: str
    repeated: bool


class Load:
    """Steady chat traffic on every replica: half repeated prompts (hits once stored), half new
    ones (misses), from a few concurrent workers, until `stop` is set."""

    def __init__(self, replicas: list[Replica]) -> None:
        self.replicas = replicas
        self.samples: list[Sample] = []
        self.stop = threading.Event()

    async def run(self) -> None:
        clients = [replica.client() for replica in self.replicas]
        await asyncio.gather(*(self._worker(w, clients) for w in range(WORKERS)))

    async def _worker(self, worker: int, clients: list[openai.AsyncOpenAI]) -> None:
        n = 0
        while not self.stop.is_set():
            which = (worker + n) % len(clients)
            repeated = n % 2 == 0
            prompt = REPEATED[n // 2 % len(REPEATED)] if repeated else f"New {worker}-{n}"
            started = time.monotonic()
            try:
                raw = await clients[which].chat.completions.with_raw_response.create(
                    model="gpt-4o-mini", messages=[{"role": "user", "content": prompt}]
                )
                raw.parse()
                status, cache = raw.status_code, raw.headers.get("x-cache", "")
            except openai.APIStatusError as exc:
                status, cache = exc.status_code, ""
            except openai.APIConnectionError:
                status, cache = 599, ""
            self.samples.append(Sample(which, started, time.monotonic(), status, cache, repeated))
            n += 1
            await asyncio.sleep(0.01)


def _subscribers(group: SentinelGroup, channel: str) -> int:
    with group.primary().client() as conn:
        found = conn.pubsub_numsub(channel)
    return int(found[0][1])


def _ledger_rows(path: Path) -> int:
    with sqlite3.connect(path) as db:
        return int(db.execute("SELECT count(*) FROM ai_requests").fetchone()[0])


def _wait(what: str, done: Callable[[], bool], timeout_s: float = RECOVERY_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():
        assert time.monotonic() < deadline, f"{what} within {timeout_s} s"
        time.sleep(0.1)


@pytest.mark.parametrize(
    ("how", "tls"),
    [("kill the primary", False), ("SENTINEL FAILOVER", False), ("kill the primary", True)],
)
def test_a_failover_under_load_costs_misses_not_errors(
    tmp_path: Path, stub: Stub, redis_pki: Pki, how: str, tls: bool
) -> None:
    with SentinelGroup(redis_pki if tls else None) as group:
        _failover_under_load(tmp_path, stub, group, how)


def _failover_under_load(tmp_path: Path, stub: Stub, group: SentinelGroup, how: str) -> None:
    env = group.env()
    url = env.pop("REDIS_URL")
    replicas = [Replica(tmp_path, name, url, stub.url, env) for name in NAMES]
    load = Load(replicas)
    thread = threading.Thread(target=asyncio.run, args=(load.run(),))
    try:
        for replica in replicas:
            replica.wait_healthy()
        thread.start()
        _wait("both replicas serve near hits", lambda: all(near_hits(r) > 0 for r in replicas))
        old = group.primary_port()
        if how == "kill the primary":
            group.kill_primary()
        else:
            with group.sentinels[0].client() as sentinel:
                sentinel.execute_command("SENTINEL", "FAILOVER", SERVICE)
        switched_at = time.monotonic()  # after the kill, not before the sentinel query it makes
        group.wait_promoted(old)
        promoted_at = time.monotonic()
        near_before = [near_hits(r) for r in replicas]

        def recovered() -> bool:
            back = {s.replica for s in list(load.samples) if s.started > promoted_at
                    and s.cache == "HIT"}  # fmt: skip
            near_back = all(near_hits(r) > n for r, n in zip(replicas, near_before, strict=True))
            return back == {0, 1} and near_back

        _wait("Redis hits and near hits back on both replicas", recovered)
        # Both replicas' pub/sub listeners (invalidations, peer flights) are on the new primary.
        for channel in (INVALIDATION_CHANNEL, FLIGHTS_CHANNEL):
            _wait(
                f"both replicas subscribed to {channel}",
                lambda c=channel: _subscribers(group, c) == 2,
            )
    finally:
        load.stop.set()
        if thread.is_alive():
            thread.join(30)
    samples = load.samples
    try:
        assert samples and {s.status for s in samples} == {200}, [
            s for s in samples if s.status != 200
        ][:5]
        if how == "kill the primary":
            # Before down-after-milliseconds no sentinel can have promoted anyone: no Redis.
            no_primary = [s for s in samples if switched_at + 0.1 < s.started
                          and s.ended < switched_at + DOWN_AFTER_MS / 1000 * 0.8]  # fmt: skip
            # Concurrent identical misses share one upstream call (COALESCED): still not a hit.
            assert no_primary and {s.cache for s in no_primary} <= {"MISS", "COALESCED"}
        for index, name in enumerate(NAMES):
            sent = sum(1 for s in samples if s.replica == index)
            path = tmp_path / f"{name}.db"  # tests/fixtures/replicas.py's LEDGER_PATH
            _wait(f"{sent} ledger rows in {path.name}", lambda p=path, n=sent: _ledger_rows(p) == n)
    finally:
        for replica in replicas:
            replica.stop()


@pytest.mark.parametrize("wrong", ["sentinel_password", "password"])
def test_a_wrong_password_stops_start_up_without_showing_it(
    tmp_path: Path, stub: Stub, tls_sentinel_group: SentinelGroup, wrong: str
) -> None:
    env = tls_sentinel_group.env()
    secret = SENTINEL_PASSWORD if wrong == "sentinel_password" else PASSWORD
    url = env.pop("REDIS_URL").replace(secret, "Wrong-guess-3")
    stderr = _start_and_fail(tmp_path, stub, url, **env)
    if wrong == "sentinel_password":
        assert "refused REDIS_URL's sentinel_username/sentinel_password: " in stderr
        assert len(stderr.strip().splitlines()[-1]) < 300  # one short line, not every sentinel
    else:
        assert "refused REDIS_URL's credentials (user 'sidecar')" in stderr
    assert "Wrong-guess-3" not in stderr and secret not in stderr


async def test_a_not_primary_reply_drops_the_pipe_connection() -> None:
    """A replica cut from its primary (`replica-serve-stale-data no`) answers -MASTERDOWN: the
    pipe closes that connection, so the next GET reconnects (and, with Sentinel, re-resolves)
    rather than asking the same server again."""
    with RedisServer() as replica:
        with replica.client() as conn:  # after start-up: its PING check would get MASTERDOWN
            conn.config_set("replica-serve-stale-data", "no")
            conn.replicaof("127.0.0.1", free_port())
        pipe = RedisPipe(RedisLink.from_url(replica.url), 1.0)
        try:
            with pytest.raises(PipeError, match="MASTERDOWN"):
                await pipe.get("sc:e:anything")
            protocol = pipe._protocol
            assert protocol is not None
            for _ in range(100):
                if protocol.transport is None:
                    break
                await asyncio.sleep(0.01)
            assert protocol.transport is None  # dropped: the next GET connects anew
        finally:
            pipe.close()
