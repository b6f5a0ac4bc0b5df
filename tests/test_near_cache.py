"""The near cache (proxy/cache/near.py) and the Redis store with it in front, on a real Redis:
never served past its TTL, bounded by bytes, kept right by Redis' invalidation messages, safe
against a read that races an invalidation, and bypassed while Redis tracking is down."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import redis

from proxy.cache.near import ENTRY_OVERHEAD, NearCache
from proxy.cache.near_store import NearStore
from proxy.cache.pipe import RedisPipe
from proxy.cache.redis import RedisStore, connect_redis
from proxy.cache.redis_link import RedisLink
from proxy.cache.tracking import TrackingListener
from proxy.settings import NEAR_CACHE_MB_DEFAULT
from proxy.settings_load import load_settings
from proxy.vocabulary import ENTRY_KEY, INVALIDATION_GENERATION_KEY
from tests.fixtures.redis_server import RedisServer
from tests.fixtures.server_base import free_port
from tests.test_settings import REPO, clean_environ
from tests.test_single_flight import until

KEY = ENTRY_KEY % "abc"
OTHER = ENTRY_KEY % "def"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_an_entry_is_never_served_past_its_ttl() -> None:
    clock = Clock()
    near = NearCache(1 << 20, clock)
    near.enable()
    near.fill(KEY, b"value", 1500, near.epoch)
    clock.now += 1.499
    assert near.get(KEY) == b"value"
    clock.now += 0.001
    assert near.get(KEY) is None
    assert (len(near), near.held_bytes) == (0, 0)  # dropped, not only hidden


def test_keys_without_a_ttl_or_gone_are_not_kept() -> None:
    near = NearCache(1 << 20)
    near.enable()
    near.fill(KEY, b"value", -1, near.epoch)  # PTTL -1: no expiry in Redis (not ours)
    near.fill(OTHER, b"value", -2, near.epoch)  # PTTL -2: gone meanwhile
    assert len(near) == 0


def test_bounded_by_bytes_least_recently_used_first() -> None:
    size = len(KEY) + 100 + ENTRY_OVERHEAD
    near = NearCache(2 * size)
    near.enable()
    third = ENTRY_KEY % "ghi"
    near.fill(KEY, b"a" * 100, 60_000, near.epoch)
    near.fill(OTHER, b"b" * 100, 60_000, near.epoch)
    assert near.get(KEY) is not None  # OTHER is now the least recently used
    near.fill(third, b"c" * 100, 60_000, near.epoch)
    assert (near.get(OTHER), near.evictions, near.held_bytes) == (None, 1, 2 * size)
    assert near.get(KEY) == b"a" * 100 and near.get(third) == b"c" * 100
    near.fill(ENTRY_KEY % "big", b"x" * (3 * size), 60_000, near.epoch)  # larger than the bound
    assert len(near) == 2


def test_a_read_that_raced_an_invalidation_or_a_clear_is_not_kept() -> None:
    near = NearCache(1 << 20)
    near.enable()
    interrupts: list[Callable[[], None]] = [lambda: near.drop(OTHER), near.clear, near.disable]
    for interrupt in interrupts:
        near.enabled = True
        sent_at = near.epoch
        interrupt()
        near.fill(KEY, b"old", 60_000, sent_at)
        near.enabled = True
        assert near.get(KEY) is None


async def wait_on(near: NearCache, on: bool = True) -> None:
    """Tracking is set up (or seen lost) in the background."""
    for _ in range(1000):
        if near.enabled is on:
            return
        await asyncio.sleep(0.01)
    pytest.fail(f"the near cache did not turn {'on' if on else 'off'}")


def near_store(url: str, pipe_url: str | None = None) -> NearStore:
    near = NearCache(1 << 20)
    store = RedisStore(
        connect_redis(url, 500, 4),
        timeout_ms=500,
        pipe=RedisPipe(RedisLink.from_url(pipe_url or url), 0.5),
        generation_key=INVALIDATION_GENERATION_KEY,
    )
    return NearStore(store, near, TrackingListener(RedisLink.from_url(url), near, 1.0))


@pytest.fixture
async def stores(redis_url: str) -> AsyncIterator[tuple[NearStore, RedisStore]]:
    """A store with a near cache, and a plain one standing for another replica."""
    mine, other = near_store(redis_url), RedisStore(connect_redis(redis_url, 500, 4))
    mine.start()
    await wait_on(mine.near)
    yield mine, other
    await mine.close()
    await other.close()


def keyspace_hits(url: str) -> int:
    client = redis.Redis.from_url(url)
    hits = client.info("stats")["keyspace_hits"]
    client.close()
    assert isinstance(hits, int)
    return hits


async def test_a_near_hit_does_not_reach_redis(
    stores: tuple[NearStore, RedisStore], redis_url: str
) -> None:
    mine, other = stores
    await other.put(KEY, b"v1", 60)
    assert await mine.get(KEY) == b"v1"  # from Redis, kept
    before = keyspace_hits(redis_url)
    assert [await mine.get(KEY) for _ in range(5)] == [b"v1"] * 5
    assert keyspace_hits(redis_url) == before
    assert mine.near.hits == 5


async def test_another_writer_is_seen_on_the_very_next_read(
    stores: tuple[NearStore, RedisStore],
) -> None:
    """The other store's write returns only after Redis queued the invalidation for us, so
    the read that follows it (no sleep) must see the new bytes, every time."""
    mine, other = stores
    for n in range(200):
        await other.put(KEY, b"v%d" % n, 60)
        assert await mine.get(KEY) == b"v%d" % n
        assert await mine.get(KEY) == b"v%d" % n  # the near copy of the new value
    assert mine.near.hits == 200


async def test_deletes_generation_changes_and_flushes_reach_the_near_cache(
    stores: tuple[NearStore, RedisStore], redis_url: str
) -> None:
    mine, other = stores
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        await other.put_many([(KEY, b"one", 60), (OTHER, b"two", 60)])
        assert await mine.get_many([KEY, OTHER]) == [b"one", b"two"]
        assert len(mine.near) == 2
        # Redis sends its report in the same turn as the writer's reply, but on another socket
        # of this one process: it is read within milliseconds, not before the next statement.
        # (The replicas' tests prove the next *request* sees it: tests/test_near_cache_replicas.py.)
        await client.delete(KEY)
        await until(lambda: KEY not in mine.near, "the delete's report", timeout_s=1)
        assert await mine.get_many([KEY, OTHER]) == [None, b"two"]
        assert mine.near.hits == 1
        await client.incr(INVALIDATION_GENERATION_KEY)  # any invalidation rule
        await until(lambda: len(mine.near) == 0, "the generation's report", timeout_s=1)
        assert await mine.get(OTHER) == b"two"
        assert mine.shared_generation == 1  # read from Redis again: the Invalidator catches up
        await client.flushall()
        await until(lambda: len(mine.near) == 0, "the flush's report", timeout_s=1)
        assert await mine.get(OTHER) is None
    finally:
        await client.aclose()


async def test_the_near_copy_expires_no_later_than_redis(
    stores: tuple[NearStore, RedisStore], redis_url: str
) -> None:
    mine, other = stores
    await other.put(KEY, b"short", 60)
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        await client.pexpire(KEY, 300)  # an invalidation: the near copy (if any) goes
        before = time.monotonic()
        assert await mine.get(KEY) == b"short"
        expires = mine.near.expires_at(KEY)
        assert expires <= time.monotonic() + 0.3
        assert expires > before  # kept, for at most what Redis had left
        await asyncio.sleep(0.35)
        assert await mine.get(KEY) is None
    finally:
        await client.aclose()


class Relay:
    """A TCP relay to Redis that can hold back Redis' replies: so a reply can be made to
    arrive after an invalidation that Redis sent later."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.holding = False
        self.released = asyncio.Event()
        self.server: asyncio.Server | None = None

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        redis_r, redis_w = await asyncio.open_connection("127.0.0.1", self.target_port)

        async def up() -> None:
            while data := await client_r.read(65536):
                redis_w.write(data)
            redis_w.close()  # the client left: so does Redis' side (and `down` ends)

        async def down() -> None:
            while data := await redis_r.read(65536):
                if self.holding:
                    await self.released.wait()
                client_w.write(data)

        try:
            await asyncio.gather(up(), down(), return_exceptions=True)
        finally:
            client_w.close()
            redis_w.close()

    def close(self) -> None:
        if self.server is not None:
            self.server.close()


async def test_a_reply_arriving_after_its_invalidation_is_not_kept(
    redis_server: RedisServer, redis_url: str
) -> None:
    relay = Relay(redis_server.port)
    await relay.start()
    mine = near_store(redis_url, f"redis://127.0.0.1:{relay.port}/0")
    other = RedisStore(connect_redis(redis_url, 500, 4))
    mine.start()
    try:
        await wait_on(mine.near)
        await other.put(KEY, b"old", 60)
        assert await mine.get(OTHER) is None  # the pipe is connected through the relay
        relay.holding = True
        epoch, hits = mine.near.epoch, keyspace_hits(redis_url)
        read = asyncio.create_task(mine.get(KEY))
        for _ in range(500):  # until Redis answered "old"; the relay holds the reply
            if keyspace_hits(redis_url) > hits:
                break
            await asyncio.sleep(0.01)
        await other.put(KEY, b"new", 60)
        assert mine.near.epoch > epoch  # the invalidation came first
        relay.released.set()
        assert await read == b"old"  # a read sent before the write may answer the old value
        assert KEY not in mine.near  # but it is not kept
        assert await mine.get(KEY) == b"new"
    finally:
        await mine.close()
        await other.close()
        relay.close()
        await asyncio.sleep(0.05)  # the relayed connections end (their peers closed)


async def test_redis_restarted_empty_leaves_no_near_entry_behind(
    private_redis: RedisServer,
) -> None:
    mine, other = (
        near_store(private_redis.url),
        RedisStore(connect_redis(private_redis.url, 500, 4)),
    )
    mine.start()
    try:
        await wait_on(mine.near)
        await other.put(KEY, b"before", 60)
        assert [await mine.get(KEY), await mine.get(KEY)] == [b"before", b"before"]
        private_redis.stop()
        await wait_on(mine.near, on=False)
        assert len(mine.near) == 0
        private_redis.start()  # same port, empty
        assert await mine.get(KEY) is None
        await wait_on(mine.near)
        await other.put(KEY, b"after", 60)
        assert [await mine.get(KEY), await mine.get(KEY)] == [b"after", b"after"]
        assert mine.near.get(KEY) == b"after"  # served near again
    finally:
        await mine.close()
        await other.close()


@pytest.mark.parametrize("value", ["-1", "abc"])
def test_a_bad_near_cache_size_stops_start_up_naming_it(value: str) -> None:
    env = clean_environ(NEAR_CACHE_MB=value, REDIS_URL="redis://127.0.0.1:1/0")
    done = subprocess.run(
        [sys.executable, "-m", "proxy", "serve"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    assert f"NEAR_CACHE_MB='{value}'" in done.stderr, done.stderr


def test_the_near_cache_size_is_read_from_the_environment_and_the_config_file(
    tmp_path: Path,
) -> None:
    assert load_settings({"NEAR_CACHE_MB": "64"}).cache.near_cache_mb == 64.0
    config = tmp_path / "sidecache.toml"
    config.write_text("[cache]\nnear_cache_mb = 0.5\n")
    assert load_settings({"SIDECACHE_CONFIG": str(config)}).cache.near_cache_mb == 0.5
    assert load_settings({}).cache.near_cache_mb == NEAR_CACHE_MB_DEFAULT
