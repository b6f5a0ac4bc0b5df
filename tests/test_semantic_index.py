"""The semantic index and the shared vector log, without the model: vectors are made up."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence

import numpy as np
from redis.asyncio import Redis

from proxy.semantic.embedder import LocalEmbedder
from proxy.semantic.index import VectorIndex
from proxy.semantic.local_model import load_local_model
from proxy.semantic.vector_log import RedisVectorLog, VectorRecord

DIM = 8


def unit(seed: int) -> np.ndarray:
    vector = np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)
    return vector / np.linalg.norm(vector)


def record(digest: str, seed: int, *, ttl: float = 60) -> VectorRecord:
    return VectorRecord(digest, unit(seed).tobytes(), f"question {digest}", time.time() + ttl)


def test_search_finds_the_nearest_first_and_never_an_expired_or_removed_one() -> None:
    index = VectorIndex(max_per_partition=100, max_vectors=1000)
    for i in range(10):
        index.add("p", record(f"{i:064x}", i))
    index.add("p", record("e" * 64, 99, ttl=-1))  # already expired: not even added
    partition = index.partition("p", DIM)
    found = partition.search(unit(3), time.time())
    assert found[0].digest == f"{3:064x}" and abs(found[0].similarity - 1) < 1e-5
    assert [c.similarity for c in found] == sorted((c.similarity for c in found), reverse=True)
    assert index.remove(f"{3:064x}"[:16]) is True  # by X-Cache-Key
    assert all(c.digest != f"{3:064x}" for c in partition.search(unit(3), time.time()))
    assert partition.search(unit(4), time.time() + 3600) == []  # all expired by then
    assert index.vectors == 10


def test_partitions_are_bounded_and_never_mix() -> None:
    index = VectorIndex(max_per_partition=10, max_vectors=25)
    for i in range(30):
        index.add("a", record(f"a{i:063x}", i))
    assert len(index.partition("a", DIM)) <= 10
    assert index.partition("a", DIM).search(unit(29), time.time())[0].digest == f"a{29:063x}"
    for name in ("b", "c", "d"):
        for i in range(10):
            index.add(name, record(f"{name}{i:063x}", i))
    assert index.vectors <= 25  # least recently used partitions went first
    assert index.partition("b", DIM).search(unit(1), time.time()) == []  # b was dropped
    wrong_size = VectorRecord("f" * 64, np.ones(4, np.float32).tobytes(), "x", time.time() + 60)
    index.add("d", wrong_size)  # another dimension never enters a partition
    assert all(c.digest != "f" * 64 for c in index.partition("d", DIM).search(unit(1), 0))


def test_the_redis_log_is_read_from_where_a_replica_left_off(redis_url: str) -> None:
    async def scenario() -> None:
        redis = Redis.from_url(redis_url)
        errors: list[str] = []
        log = RedisVectorLog(redis, max_per_partition=5, timeout_ms=500, on_error=errors.append)
        for i in range(3):
            await log.append("p1", record(f"{i:064x}", i), ttl_s=60)
        read = await log.read("p1", "")
        assert read is not None
        records, cursor = read
        assert [r.digest for r in records] == [f"{i:064x}" for i in range(3)]
        await log.append("p1", record("a" * 64, 7), ttl_s=120)
        again = await log.read("p1", cursor)
        assert again is not None and [r.digest for r in again[0]] == ["a" * 64]
        assert 60 < await redis.ttl("sc:s:{p1}") <= 120  # expires with its newest entry
        for i in range(20):
            await log.append("p1", record(f"{i + 100:064x}", i), ttl_s=60)
        assert await redis.xlen("sc:s:{p1}") == 5  # trimmed to max_per_partition, oldest first
        await redis.xadd("sc:s:{p1}", {b"r": b"\xc1not msgpack"})
        broken = await log.read("p1", "")
        assert broken is not None and all(len(r.digest) == 64 for r in broken[0])
        assert errors == []
        await redis.aclose()

    asyncio.run(scenario())


def test_an_unreachable_redis_reads_as_nothing_to_add() -> None:
    async def scenario() -> None:
        redis = Redis.from_url("redis://127.0.0.1:1", socket_connect_timeout=0.2)
        errors: list[str] = []
        log = RedisVectorLog(redis, max_per_partition=5, timeout_ms=300, on_error=errors.append)
        assert await log.read("p", "") is None
        await log.append("p", record("b" * 64, 1), ttl_s=60)
        assert errors == ["read", "append"]
        await redis.aclose()

    asyncio.run(scenario())


def test_concurrent_questions_are_embedded_in_batches_off_the_loop() -> None:
    model = load_local_model()
    batches: list[int] = []
    threads: set[str] = set()

    def counting(texts: Sequence[str]) -> np.ndarray:
        batches.append(len(texts))
        threads.add(threading.current_thread().name)
        return model(texts)

    async def scenario() -> list[np.ndarray | None]:
        embedder = LocalEmbedder(load=lambda: counting)
        await embedder.start()
        assert await embedder.loaded()
        questions = [f"What is question number {n} about?" for n in range(16)]
        vectors = await asyncio.gather(*(embedder.embed(q, {}) for q in questions))
        await embedder.close()
        return vectors

    vectors = asyncio.run(scenario())
    assert all(v is not None and v.shape == (384,) for v in vectors)
    assert sum(batches) == 16 and len(batches) < 16  # whatever queued meanwhile went together
    assert threads == {t for t in threads if t.startswith("sidecache-embed")}
    direct = model(["What is question number 3 about?"])[0]
    assert vectors[3] is not None and float(vectors[3] @ direct) > 0.999
