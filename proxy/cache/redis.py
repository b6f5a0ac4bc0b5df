"""The shared store: Redis through redis-py with hiredis, one round trip per hit.

Timeouts are a fraction of a second and there are no retries (docs/design.md §9): a slow or absent
Redis turns reads into misses rather than stalling requests.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from proxy.cache.pipe import PipeError, RedisPipe
from proxy.cache.redis_link import RedisLink

if TYPE_CHECKING:
    from proxy.cache.cluster import RedisClient
    from proxy.cache.cluster_pipe import ClusterPipe

log = logging.getLogger("sidecache.cache")

# How often a failing Redis is reported in the log (the metric counts every failure).
_LOG_EVERY_S = 10.0


def connect_redis(url: str | RedisLink, timeout_ms: int, max_connections: int) -> Redis:
    """A client tuned for the request path; also used by other services sharing the server.

    No socket timeout: redis-py wraps every send in `asyncio.wait_for` when one is set, which
    costs a Task per command. Callers bound each operation with `asyncio.timeout` instead.
    A plain pool (not the blocking one) for the same reason; past `max_connections` a command
    fails at once and is served as a miss. TLS, ACL user, database and Sentinel come from the
    link (proxy/cache/redis_link.py); a plain URL string is read with no TLS files.
    """
    link = RedisLink.from_url(url, timeout_s=timeout_ms / 1000) if isinstance(url, str) else url
    return link.client(
        max_connections=max_connections,
        socket_connect_timeout=timeout_ms / 1000,
        health_check_interval=0,
    )


class RedisStore:
    backend = "redis"

    def __init__(
        self,
        client: RedisClient,
        on_error: Callable[[str], None] | None = None,
        *,
        timeout_ms: int = 250,
        pipe: RedisPipe | ClusterPipe | None = None,
        generation_key: str | None = None,
    ) -> None:
        self._client = client
        self._pipe = pipe  # the hit path's GET, when the URL allows it
        # Read with every lookup, in the same round trip: the shared invalidation generation.
        self._generation_key = generation_key
        self.shared_generation = 0
        self._timeout_s = timeout_ms / 1000
        self._on_error = on_error
        self._available = True
        self._last_logged = 0.0

    @property
    def available(self) -> bool:
        return self._available

    async def get(self, key: str) -> bytes | None:
        if self._pipe is None:
            return (await self.get_many([key]))[0]
        generation = None
        try:
            if self._generation_key is None:
                found = await self._pipe.get(key)
            else:
                found, generation = await self._pipe.mget(key, self._generation_key)
        except PipeError as exc:
            self._failed("get", exc)
            return None
        self._available = True
        self._saw_generation(generation)
        return found

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        if not keys:
            return []
        try:
            async with asyncio.timeout(self._timeout_s):
                # A pipeline of GETs rather than MGET: the keys need not share a cluster slot.
                async with self._client.pipeline(transaction=False) as pipe:
                    for key in keys:
                        pipe.get(key)
                    if self._generation_key is not None:
                        pipe.get(self._generation_key)
                    values: list[bytes | None] = await pipe.execute()
        except (RedisError, OSError) as exc:
            self._failed("get", exc)
            return [None] * len(keys)
        self._available = True
        if self._generation_key is not None:
            self._saw_generation(values.pop())
        return values

    async def get_with_ttl(self, key: str) -> tuple[bytes | None, int]:
        """An entry and its remaining TTL in ms (negative: none), in one round trip; for the
        near cache, which must not keep an entry longer than Redis does."""
        if self._pipe is None:
            values, ttls = await self.get_many_with_ttl([key])
            return values[0], ttls[0]
        try:
            if self._generation_key is None:
                (found,), pttl = await self._pipe.mget_pttl(key)
                generation = None
            else:
                (found, generation), pttl = await self._pipe.mget_pttl(key, self._generation_key)
        except PipeError as exc:
            self._failed("get", exc)
            return None, -2
        self._available = True
        self._saw_generation(generation)
        return found, pttl

    async def get_many_with_ttl(self, keys: Sequence[str]) -> tuple[list[bytes | None], list[int]]:
        """`get_many` and each key's remaining TTL in ms, in the same pipeline."""
        if not keys:
            return [], []
        try:
            async with asyncio.timeout(self._timeout_s):
                async with self._client.pipeline(transaction=False) as pipe:
                    for key in keys:
                        pipe.get(key)
                        pipe.pttl(key)
                    if self._generation_key is not None:
                        pipe.get(self._generation_key)
                    replies: list[Any] = await pipe.execute()
        except (RedisError, OSError) as exc:
            self._failed("get", exc)
            return [None] * len(keys), [-2] * len(keys)
        self._available = True
        if self._generation_key is not None:
            self._saw_generation(replies.pop())
        return replies[0::2], [int(ttl) for ttl in replies[1::2]]

    async def put(self, key: str, value: bytes, ttl_s: int) -> None:
        try:
            async with asyncio.timeout(self._timeout_s):
                await self._client.set(key, value, ex=ttl_s)
        except (RedisError, OSError) as exc:
            self._failed("put", exc)

    async def put_many(self, items: Sequence[tuple[str, bytes, int]]) -> None:
        if not items:
            return
        try:
            async with asyncio.timeout(self._timeout_s):
                async with self._client.pipeline(transaction=False) as pipe:
                    for key, value, ttl_s in items:
                        pipe.set(key, value, ex=ttl_s)
                    await pipe.execute()
        except (RedisError, OSError) as exc:
            self._failed("put", exc)

    async def ping(self) -> bool:
        try:
            async with asyncio.timeout(self._timeout_s):
                await self._client.ping()
        except (RedisError, OSError) as exc:
            self._failed("ping", exc)
            return False
        self._available = True
        return True

    def usage(self) -> tuple[int, int]:
        return -1, -1

    async def close(self) -> None:
        if self._pipe is not None:
            self._pipe.close()
        await self._client.aclose()

    def _saw_generation(self, raw: bytes | None) -> None:
        if raw is not None and raw.isdigit():
            self.shared_generation = max(self.shared_generation, int(raw))

    def _failed(self, op: str, exc: BaseException) -> None:
        self._available = False
        if self._on_error is not None:
            self._on_error(op)
        now = time.monotonic()
        if now - self._last_logged >= _LOG_EVERY_S:
            self._last_logged = now
            log.warning("redis %s failed, serving as pass-through: %s", op, type(exc).__name__)
