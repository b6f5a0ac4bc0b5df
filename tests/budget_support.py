"""Test helpers for budgets: a settable clock, a real loopback webhook receiver, and the two
spend stores (memory, and Redis through the same client settings the proxy uses)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web

from proxy.budget.spend import MemorySpend, SpendStore
from proxy.budget.spend_redis import RedisSpend
from proxy.cache.cluster import RedisClient, connect_cluster
from proxy.cache.redis import connect_redis
from proxy.cache.redis_link import RedisLink

START = datetime(2026, 11, 24, 15, 30, tzinfo=UTC)


class Clock:
    def __init__(self, now: datetime = START) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


class Receiver:
    """An aiohttp server on 127.0.0.1 that keeps every JSON body POSTed to /hook."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        async def hook(request: web.Request) -> web.Response:
            self.bodies.append(await request.json())
            return web.Response(status=204)

        app = web.Application()
        app.router.add_post("/hook", hook)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}/hook"

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def thresholds(self, **match: Any) -> list[float]:
        """The thresholds alerted, sorted: alerts are posted concurrently, in no set order."""
        return sorted(
            body["threshold"]
            for body in self.bodies
            if all(body.get(k) == v for k, v in match.items())
        )


@asynccontextmanager
async def spend_store(kind: str, redis_url: str | None = None) -> AsyncIterator[SpendStore]:
    if kind == "memory":
        yield MemorySpend()
        return
    assert redis_url is not None
    client: RedisClient
    if kind == "cluster":
        client = connect_cluster(RedisLink.from_url(redis_url), 250, 16)
        await client.initialize()  # the slot map read before the first bounded command
    else:
        client = connect_redis(redis_url, 250, 16)
    try:
        yield RedisSpend(client, timeout_ms=250)
    finally:
        await client.aclose()
