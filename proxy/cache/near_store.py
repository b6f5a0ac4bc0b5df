"""The Redis store with a near cache in front (`NEAR_CACHE_MB`): a hot entry is answered from
this process' memory, with no round trip, as long as Redis reports changes to it
(`proxy.cache.tracking`); every other read goes to Redis and brings the key's remaining TTL in
the same round trip, so the near copy expires no later than the Redis one.

`available` and `shared_generation` are the Redis store's (proxy/cache/store.py): a near hit
reads no generation, which is why tracking clears the near cache whenever the shared generation
key changes.
"""

from __future__ import annotations

from collections.abc import Sequence

from proxy.cache.near import NearCache
from proxy.cache.redis import RedisStore
from proxy.cache.store import answer_in_turn
from proxy.cache.tracking import TrackingListener


class NearStore:
    backend = "redis"

    def __init__(self, redis: RedisStore, near: NearCache, tracking: TrackingListener) -> None:
        self._redis = redis
        self.near = near
        self._tracking = tracking

    @property
    def shared_generation(self) -> int:
        return self._redis.shared_generation

    @shared_generation.setter
    def shared_generation(self, value: int) -> None:
        self._redis.shared_generation = value

    @property
    def available(self) -> bool:
        return self._redis.available

    def start(self) -> None:
        self._tracking.start()

    async def get(self, key: str) -> bytes | None:
        near = self.near
        if not near.enabled:
            return await self._redis.get(key)
        # In turn first, as the memory store does (hits are answered in phases); and the turn
        # also reads any invalidation report already on its way, before the lookup.
        await answer_in_turn()
        found = near.get(key)
        if found is not None:
            return found
        epoch = near.epoch
        found, ttl_ms = await self._redis.get_with_ttl(key)
        if found is not None:
            near.fill(key, found, ttl_ms, epoch)
        return found

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        near = self.near
        if not near.enabled:
            return await self._redis.get_many(keys)
        await answer_in_turn()
        values: list[bytes | None] = [near.get(key) for key in keys]
        missing = [i for i, value in enumerate(values) if value is None]
        if not missing:
            return values
        epoch = near.epoch
        found, ttls = await self._redis.get_many_with_ttl([keys[i] for i in missing])
        for i, value, ttl_ms in zip(missing, found, ttls, strict=True):
            values[i] = value
            if value is not None:
                near.fill(keys[i], value, ttl_ms, epoch)
        return values

    async def put(self, key: str, value: bytes, ttl_s: int) -> None:
        # Dropped, not replaced: Redis reports this write back to us too (our writes do not go
        # through the tracking connection), and the next read fills it with Redis' own TTL.
        self.near.drop(key)
        await self._redis.put(key, value, ttl_s)

    async def put_many(self, items: Sequence[tuple[str, bytes, int]]) -> None:
        for key, _, _ in items:
            self.near.drop(key)
        await self._redis.put_many(items)

    async def ping(self) -> bool:
        return await self._redis.ping()

    def usage(self) -> tuple[int, int]:
        return self._redis.usage()

    async def close(self) -> None:
        await self._tracking.close()
        await self._redis.close()
