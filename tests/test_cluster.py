"""The Redis Cluster hit path (proxy/cache/cluster_pipe.py, docs/design.md §12) against a real
3-primary cluster: slots as Redis computes them, MOVED and ASK followed while a slot migrates."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import AskError

from proxy.cache.cluster_pipe import ClusterPipe
from proxy.cache.near_store import NearStore
from proxy.cache.pipe import PipeError
from proxy.cache.redis import RedisStore
from proxy.cache.redis_link import RedisLink
from proxy.cache.slots import SlotMap, keyslot, parse_redirect
from tests.fixtures.redis_cluster import ClusterServers
from tests.fixtures.redis_server import RedisServer
from tests.fixtures.server_base import free_port
from tests.fixtures.sidecar import SidecarFactory

KEYS = [b"sc:e:{0123abcd}", b"sc:{inv}:gen", b"plain", b"{}x", b"a{}{b}", b"x{y", b"{user1}.z"]


def node_id(node: RedisServer) -> str:
    with node.client() as conn:
        found = conn.execute_command("CLUSTER", "MYID")
    return found.decode() if isinstance(found, bytes) else str(found)


def start_migration(source: RedisServer, target: RedisServer, slot: int) -> None:
    with target.client() as conn:
        conn.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", node_id(source))
    with source.client() as conn:
        conn.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", node_id(target))


def migrate(source: RedisServer, target: RedisServer, key: bytes) -> None:
    with source.client() as conn:
        conn.execute_command("MIGRATE", target.host, target.port, key, 0, 5000)


def finish_migration(cluster: ClusterServers, target: RedisServer, slot: int) -> None:
    for node in cluster.primaries():
        with node.client() as conn:
            conn.execute_command("CLUSTER", "SETSLOT", slot, "NODE", node_id(target))


def test_slots_are_the_ones_redis_computes(redis_cluster: ClusterServers, cluster_url: str) -> None:
    with redis_cluster.live()[0].client() as conn:
        for key in KEYS:
            assert keyslot(key) == conn.execute_command("CLUSTER", "KEYSLOT", key), key
    assert keyslot(b"sc:e:{k}") == keyslot(b"sc:l:{k}")  # an entry and its lock: one slot


async def test_reads_follow_ask_then_moved_while_a_slot_migrates(
    redis_cluster: ClusterServers, cluster_url: str
) -> None:
    key = "sc:e:{migrating}"
    with redis_cluster.client() as conn:
        conn.set(key, b"answer")
        conn.set("sc:e:{stays}", b"other")
    source = redis_cluster.owner(keyslot(key.encode()))
    target = next(n for n in redis_cluster.primaries() if n.port != source.port)
    slot = keyslot(key.encode())
    pipe = ClusterPipe(RedisLink.from_url(cluster_url), 1.0)
    await pipe.start()
    try:
        assert await pipe.mget(key, "sc:e:{stays}") == [b"answer", b"other"]
        start_migration(source, target, slot)
        migrate(source, target, key.encode())
        with source.client() as conn, pytest.raises(AskError):
            conn.get(key)  # the source no longer has it: it answers ASK
        assert await pipe.get(key) == b"answer"  # ASKING + GET on the target
        finish_migration(redis_cluster, target, slot)
        assert await pipe.get(key) == b"answer"  # MOVED: retried on the target
        assert await pipe.get(key) == b"answer"  # and now sent there first
        assert await pipe.get("sc:e:{absent}") is None
    finally:
        pipe.close()


async def test_a_pipe_without_a_reachable_node_fails_as_a_miss_would(
    redis_cluster: ClusterServers, cluster_url: str
) -> None:
    pipe = ClusterPipe(RedisLink.from_url(f"redis://127.0.0.1:{free_port()}/0"), 0.5)
    await pipe.start()  # no map: logged, not raised
    try:
        with pytest.raises(PipeError):  # no slot map: RedisStore serves it as a miss
            await pipe.get("sc:e:{x}")
    finally:
        pipe.close()


def test_auto_finds_the_cluster_and_leaves_the_near_cache_off(
    make_sidecar: SidecarFactory, cluster_url: str, redis_url: str
) -> None:
    on_cluster = make_sidecar(REDIS_URL=cluster_url, NEAR_CACHE_MB="64")
    assert isinstance(on_cluster.runtime.redis, RedisCluster)
    assert isinstance(on_cluster.runtime.store, RedisStore)  # no NearStore in front
    single = make_sidecar(REDIS_URL=redis_url, NEAR_CACHE_MB="64")
    assert isinstance(single.runtime.redis, Redis)
    assert isinstance(single.runtime.store, NearStore)


def test_a_slot_map_and_redirections_as_redis_words_them() -> None:
    reply = [
        [0, 5460, [b"", 7000, b"id-a"], [b"127.0.0.1", 7003, b"id-d"]],
        [5461, 16383, [b"10.0.0.2", 7001, b"id-b"]],
    ]
    slots = SlotMap.parse(reply, "10.0.0.1")
    assert slots.node_of(0) == ("10.0.0.1", 7000)  # an empty host: the one asked
    assert slots.node_of(5461) == slots.node_of(16383) == ("10.0.0.2", 7001)
    slots.moved(42, ("10.0.0.3", 7002))
    assert slots.node_of(42) == ("10.0.0.3", 7002)
    assert slots.node_of(41) == ("10.0.0.1", 7000)
    assert parse_redirect("MOVED 3999 10.0.0.9:6381", "h") == ("MOVED", 3999, ("10.0.0.9", 6381))
    assert parse_redirect("ASK 1 :6380", "h") == ("ASK", 1, ("h", 6380))
    assert parse_redirect("CLUSTERDOWN The cluster is down", "h") is None
    assert parse_redirect("connection to Redis lost", "h") is None
