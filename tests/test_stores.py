"""The cache store contract, run on both stores (docs/design.md §8), plus what only one of them
does: the memory store's byte-bounded LRU, and the Redis store's behaviour while Redis is away."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.cache.entry import (
    EntryMeta,
    StoredResponse,
    StoredVector,
    decode_response,
    decode_vector,
    encode_entry,
)
from proxy.cache.memory import MemoryStore
from proxy.cache.redis import RedisStore, connect_redis
from proxy.cache.store import CacheStore
from tests.fixtures.redis_server import RedisServer

# Far below redis-py's defaults (4+ s for a refused connection, about a minute for a hung
# server), far above the store's own 250 ms timeout: a bound that proves "does not hang"
# without being a timing test.
PROMPT_BOUND_S = 2.0


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class StoreCase:
    store: CacheStore
    advance: Callable[[float], Awaitable[None]]  # let time pass for the store's TTLs


@pytest.fixture(params=["memory", "redis"])
async def case(request: pytest.FixtureRequest) -> AsyncIterator[StoreCase]:
    if request.param == "memory":
        clock = FakeClock()

        async def tick(seconds: float) -> None:
            clock.now += seconds

        yield StoreCase(MemoryStore(1 << 20, clock=clock), tick)
        return
    url = request.getfixturevalue("redis_url")
    store = RedisStore(connect_redis(url, timeout_ms=250, max_connections=4))
    yield StoreCase(store, asyncio.sleep)
    await store.close()


async def test_get_and_put(case: StoreCase) -> None:
    store = case.store
    assert await store.get("k1") is None
    await store.put("k1", b"\x00value\xff", 60)
    assert await store.get("k1") == b"\x00value\xff"
    await store.put("k1", b"replaced", 60)
    assert await store.get("k1") == b"replaced"
    assert store.available
    assert await store.ping()


async def test_many_keep_order_and_report_missing_keys(case: StoreCase) -> None:
    store = case.store
    assert await store.get_many([]) == []
    await store.put_many([])
    await store.put_many([("a", b"1", 60), ("b", b"2", 60), ("c", b"3", 60)])
    found = await store.get_many(["c", "missing", "a", "b", "a"])
    assert found == [b"3", None, b"1", b"2", b"1"]


async def test_entries_expire(case: StoreCase) -> None:
    store = case.store
    await store.put("short", b"s", 1)
    await store.put_many([("short-too", b"t", 1), ("long", b"l", 60)])
    assert await store.get_many(["short", "short-too", "long"]) == [b"s", b"t", b"l"]
    await case.advance(1.1)
    assert await store.get("short") is None
    assert await store.get_many(["short", "short-too", "long"]) == [None, None, b"l"]


# --- the memory store's bound -------------------------------------------------------------

VALUE = b"v" * 200


async def test_memory_lru_is_bounded_by_bytes() -> None:
    probe = MemoryStore(1 << 20)
    await probe.put("k0", VALUE, 60)
    one = probe.usage()[1]
    assert one >= len("k0") + len(VALUE)  # keys, values and bookkeeping are all counted

    store = MemoryStore(3 * one + one // 2)  # room for three entries, not four
    for key in ("k1", "k2", "k3"):
        await store.put(key, VALUE, 60)
    assert store.usage() == (3, 3 * one)
    await store.put("k4", VALUE, 60)  # evicts the least recently used: k1
    assert await store.get("k1") is None
    assert store.usage() == (3, 3 * one)

    assert await store.get("k2") == VALUE  # k2 is now the most recently used ...
    await store.put("k5", VALUE, 60)  # ... so k3 goes
    assert await store.get_many(["k2", "k3", "k4", "k5"]) == [VALUE, None, VALUE, VALUE]
    entries, used = store.usage()
    assert (entries, used) == (3, 3 * one)
    assert used <= 3 * one + one // 2


async def test_memory_never_stores_an_entry_bigger_than_the_cache() -> None:
    store = MemoryStore(1000)
    await store.put("small", b"x" * 100, 60)
    await store.put("huge", b"y" * 1000, 60)
    assert await store.get("huge") is None
    assert await store.get("small") == b"x" * 100  # nothing was evicted for it
    assert store.usage()[0] == 1


async def test_memory_replacing_an_entry_is_charged_once() -> None:
    clock = FakeClock()
    store = MemoryStore(1 << 20, clock=clock)
    await store.put("k", b"a" * 100, 60)
    before = store.usage()
    await store.put("k", b"b" * 100, 60)
    assert store.usage() == before
    clock.now += 61
    assert await store.get("k") is None  # expired: dropped, and its bytes given back
    assert store.usage() == (0, 0)


# --- Redis away -----------------------------------------------------------------------------


@contextmanager
def takes_less_than(seconds: float) -> Iterator[None]:
    started = time.monotonic()
    yield
    elapsed = time.monotonic() - started
    assert elapsed < seconds, f"took {elapsed:.2f} s"


async def check_degraded(store: RedisStore, errors: list[str]) -> None:
    """Every operation answers promptly as a miss / a dropped write, and is counted."""
    before = len(errors)
    with takes_less_than(PROMPT_BOUND_S):
        assert await store.get("k") is None
    with takes_less_than(PROMPT_BOUND_S):
        assert await store.get_many(["k", "other"]) == [None, None]
    with takes_less_than(PROMPT_BOUND_S):
        await store.put("k", b"dropped", 60)
    with takes_less_than(PROMPT_BOUND_S):
        await store.put_many([("k", b"dropped", 60)])
    with takes_less_than(PROMPT_BOUND_S):
        assert await store.ping() is False
    assert not store.available
    assert errors[before:] == ["get", "get", "put", "put", "ping"]


@pytest.fixture
async def redis_store(private_redis: RedisServer) -> AsyncIterator[tuple[RedisStore, list[str]]]:
    errors: list[str] = []
    store = RedisStore(
        connect_redis(private_redis.url, timeout_ms=250, max_connections=4),
        on_error=errors.append,
    )
    yield store, errors
    await store.close()


async def test_redis_stopped_then_restarted(
    private_redis: RedisServer, redis_store: tuple[RedisStore, list[str]]
) -> None:
    store, errors = redis_store
    await store.put("k", b"before", 60)
    assert await store.get("k") == b"before"
    assert errors == []

    private_redis.stop()
    await check_degraded(store, errors)

    private_redis.start()  # same port, empty (no persistence)
    assert await store.ping() is True
    assert store.available
    assert await store.get("k") is None
    await store.put("k", b"after", 60)
    assert await store.get("k") == b"after"
    assert len(errors) == 5


async def test_redis_hung_does_not_stall(
    private_redis: RedisServer, redis_store: tuple[RedisStore, list[str]]
) -> None:
    """A server that accepts connections but never answers (stopped with SIGSTOP)."""
    store, errors = redis_store
    await store.put("k", b"v", 60)
    with private_redis.client() as conn:
        pid = int(conn.info("server")["process_id"])
    os.kill(pid, signal.SIGSTOP)
    try:
        await check_degraded(store, errors)
    finally:
        os.kill(pid, signal.SIGCONT)
    assert await store.ping() is True
    assert await store.get("k") == b"v"
    assert store.available


# --- the stored-entry format --------------------------------------------------------------

META = EntryMeta(
    tenant="t_0123",
    endpoint="chat.completions",
    model="gpt-4o-mini",
    scope="persona",
    user_id=None,
    persona={"experience": "beginner", "tone": "friendly"},
)


def test_stored_entries_round_trip() -> None:
    response = StoredResponse(b'{"id":"x"}', 1700000000.5, META, 12, 34, 5)
    assert decode_response(encode_entry(response)) == response
    vector = StoredVector(b"\x00\x00\x80?" * 4, 7, 1700000000.25, META)
    assert decode_vector(encode_entry(vector)) == vector
    # Compact: msgpack arrays, not field names.
    assert b"prompt_tokens" not in encode_entry(response)
    # A vector entry read as a response (or the other way round) is a miss, not a crash.
    assert decode_response(encode_entry(vector)) is None
    assert decode_vector(encode_entry(response)) is None


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"garbage",
        b"\xc1",  # a byte msgpack never uses
        msgspec.msgpack.encode({"body": "x"}),
        msgspec.msgpack.encode([b"body", "not a time", []]),
    ],
    ids=["empty", "text", "reserved-byte", "map", "wrong-types"],
)
def test_garbage_decodes_to_none(raw: bytes) -> None:
    assert decode_response(raw) is None
    assert decode_vector(raw) is None


def test_truncated_entry_decodes_to_none() -> None:
    whole = encode_entry(StoredResponse(b'{"id":"x"}', 1.0, META))
    for cut in range(len(whole)):
        assert decode_response(whole[:cut]) is None


@settings(max_examples=200, deadline=None, database=None)
@given(raw=st.binary(max_size=200))
def test_any_bytes_decode_without_raising(raw: bytes) -> None:
    found = decode_response(raw)
    assert found is None or isinstance(found, StoredResponse)
    vector = decode_vector(raw)
    assert vector is None or isinstance(vector, StoredVector)
