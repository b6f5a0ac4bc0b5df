"""The operator's per-tenant and per-user limits (set through the admin API), kept in one Redis
hash so every replica applies them: each re-reads it every RATE_OVERRIDES_REFRESH_S (and the
replica that was asked applies a change at once). Without Redis they live in this process.
The hash is one key read and written alone: nothing multi-key, Cluster-safe as it is."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

import msgspec
from redis.exceptions import RedisError

from proxy.cache.cluster import RedisClient
from proxy.failures import StoreUnavailable
from proxy.limits.limiter import Limiter
from proxy.limits.scopes import LimitOverride
from proxy.vocabulary import RATE_OVERRIDES_KEY

log = logging.getLogger("sidecache")
_decode = msgspec.json.Decoder(LimitOverride).decode
_encode = msgspec.json.Encoder().encode
_TIMEOUT_S = 2.0


def _field(scope: str, id_: str) -> str:
    return f"{scope}\n{id_}"


class LimitOverrides:
    def __init__(self, limiter: Limiter, redis: RedisClient | None, refresh_s: float) -> None:
        self._limiter = limiter
        self._redis = redis
        self._refresh_s = refresh_s
        self._task: asyncio.Task[None] | None = None

    @property
    def rows(self) -> list[LimitOverride]:
        return sorted(self._limiter.overrides.values(), key=lambda r: (r.scope, r.id))

    async def start(self) -> None:
        if self._redis is None:
            return
        with contextlib.suppress(StoreUnavailable):
            await self.refresh()
        self._task = asyncio.create_task(self._refresh_loop())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self._refresh_s)
            try:
                await self.refresh()
            except StoreUnavailable as exc:
                log.debug("rate-limit overrides not refreshed: %s", exc)

    async def refresh(self) -> None:
        if self._redis is None:
            return
        try:
            async with asyncio.timeout(_TIMEOUT_S):
                stored = await self._redis.hgetall(RATE_OVERRIDES_KEY)
        except (RedisError, OSError, TimeoutError) as exc:
            raise StoreUnavailable("Redis cannot be read for the rate-limit overrides.") from exc
        rows = []
        for raw in stored.values():
            try:
                rows.append(_decode(raw))
            except msgspec.DecodeError:
                continue  # not ours: never a reason to stop applying the others
        self._limiter.set_overrides(rows)

    async def put(self, row: LimitOverride) -> None:
        if self._redis is not None:
            await self._write(lambda r: r.hset(RATE_OVERRIDES_KEY, _field(row.scope, row.id),
                                               _encode(row)))  # fmt: skip
        found = dict(self._limiter.overrides)
        found[(row.scope, row.id)] = row
        self._limiter.set_overrides(list(found.values()))

    async def delete(self, scope: str, id_: str) -> bool:
        if self._redis is not None:
            await self._write(lambda r: r.hdel(RATE_OVERRIDES_KEY, _field(scope, id_)))
        found = dict(self._limiter.overrides)
        existed = found.pop((scope, id_), None) is not None
        self._limiter.set_overrides(list(found.values()))
        return existed

    async def _write(self, command: Callable[[RedisClient], Awaitable[object]]) -> None:
        assert self._redis is not None
        try:
            async with asyncio.timeout(_TIMEOUT_S):
                await command(self._redis)
        except (RedisError, OSError, TimeoutError) as exc:
            raise StoreUnavailable("Redis cannot store the rate-limit override.") from exc
