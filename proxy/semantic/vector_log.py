"""Where a partition's vectors are shared between replicas: a Redis stream per partition
(`SEMANTIC_LOG_KEY`), appended when an answer is stored, read from where a replica left off.

A stream needs no Redis module (Redis 7 OSS and Cluster: one key, one slot), keeps its order,
is trimmed to the newest `max_per_partition` records and expires when its newest entry would.
Each record carries its entry's expiry, so a replica drops vectors whose answers are gone
without asking. Without Redis there is no other replica: the in-process index is the whole
story and `LocalVectorLog` shares nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

import msgspec
from redis.exceptions import RedisError

from proxy.cache.cluster import RedisClient
from proxy.vocabulary import SEMANTIC_LOG_KEY

_FIELD = b"r"
_READ_MAX = 10_000  # records per read: a replica catching up on a big partition takes several


class VectorRecord(msgspec.Struct, array_like=True, frozen=True):
    digest: str  # the stored entry's key digest
    vector: bytes  # float32, unit length
    text: str  # the question, for the guards
    expires_at: float  # epoch seconds: the entry's own expiry


_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(VectorRecord).decode


class VectorLog(Protocol):
    shared: bool  # whether other replicas append to it too

    async def append(self, partition: str, record: VectorRecord, ttl_s: int) -> None: ...

    async def read(self, partition: str, after: str) -> tuple[list[VectorRecord], str] | None:
        """Records appended after the cursor `after` ("" for all), and the new cursor; None when
        the log cannot be read (the caller searches what it has)."""
        ...


class LocalVectorLog:
    shared = False

    async def append(self, partition: str, record: VectorRecord, ttl_s: int) -> None:
        return None

    async def read(self, partition: str, after: str) -> tuple[list[VectorRecord], str] | None:
        return [], after


class RedisVectorLog:
    shared = True

    def __init__(
        self,
        redis: RedisClient,
        max_per_partition: int,
        timeout_ms: int,
        on_error: Callable[[str], None],
    ) -> None:
        self._redis = redis
        self._max = max_per_partition
        self._timeout_s = timeout_ms / 1000
        self._on_error = on_error

    async def append(self, partition: str, record: VectorRecord, ttl_s: int) -> None:
        key = SEMANTIC_LOG_KEY % partition
        try:
            async with asyncio.timeout(self._timeout_s):
                async with self._redis.pipeline(transaction=False) as pipe:
                    pipe.xadd(key, {_FIELD: _encode(record)}, maxlen=self._max, approximate=False)
                    pipe.expire(key, ttl_s, nx=True)  # a new stream
                    pipe.expire(key, ttl_s, gt=True)  # the newest entry outlives the others
                    await pipe.execute()
        except (RedisError, OSError):
            self._on_error("append")

    async def read(self, partition: str, after: str) -> tuple[list[VectorRecord], str] | None:
        start = f"({after}" if after else "-"
        try:
            async with asyncio.timeout(self._timeout_s):
                rows = await self._redis.xrange(
                    SEMANTIC_LOG_KEY % partition, min=start, max="+", count=_READ_MAX
                )
        except (RedisError, OSError):
            self._on_error("read")
            return None
        records = []
        cursor = after
        for stream_id, fields in rows or ():
            if isinstance(stream_id, bytes):
                cursor = stream_id.decode()
            raw = fields.get(_FIELD) if fields else None
            if not isinstance(raw, bytes):
                continue
            try:
                records.append(_decode(raw))
            except msgspec.DecodeError:
                continue  # a broken record is skipped, never a 500
        return records, cursor
