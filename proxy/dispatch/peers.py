"""Single-flight across replicas that share a Redis (docs/design.md §4).

The replica that takes a key's lock (SET NX PX, with an owner token) calls the upstream; it
renews the lock while the call runs and, once the answer is stored, deletes the lock and
publishes the key. Followers on other replicas wait for that notice (or poll, should a notice
be lost), then read the entry. A crashed leader stops renewing, its lock expires within
`lock_ms`, and a follower takes over: nobody waits on a dead replica for longer than that.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from dataclasses import dataclass

from redis.exceptions import RedisError

from proxy.cache.cluster import RedisClient
from proxy.keys import CacheKey
from proxy.vocabulary import FLIGHTS_CHANNEL

log = logging.getLogger("sidecache.peers")
_POLL_S = 0.25
# Deletes or extends the lock only while it is still ours.
_RELEASE = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"
)
_RENEW = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then "
    "return redis.call('pexpire', KEYS[1], ARGV[2]) end return 0"
)


@dataclass(slots=True)
class Lease:
    key: CacheKey
    token: str
    keeper: asyncio.Task[None] | None = None


class PeerFlights:
    def __init__(self, redis: RedisClient, lock_ms: int, max_wait_ms: int, timeout_ms: int) -> None:
        self._redis = redis
        self._lock_ms = lock_ms
        self._max_wait_s = max_wait_ms / 1000
        self._timeout_s = timeout_ms / 1000
        self._landed: dict[str, asyncio.Event] = {}
        self._listener: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._listener = asyncio.create_task(self._listen(), name="sidecache-peer-flights")

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener

    async def try_lead(self, key: CacheKey) -> Lease | None:
        """A lease when this replica should call the upstream (also when Redis cannot tell:
        coordination is an optimisation, never a reason to fail); None when a peer leads."""
        token = secrets.token_hex(8)
        try:
            async with asyncio.timeout(self._timeout_s):
                taken = await self._redis.set(key.lock, token, nx=True, px=self._lock_ms)
        except (RedisError, OSError):
            return Lease(key, token)
        if not taken:
            return None
        lease = Lease(key, token)
        lease.keeper = asyncio.create_task(self._renew(lease))
        return lease

    async def release(self, lease: Lease) -> None:
        if lease.keeper is not None:
            lease.keeper.cancel()
        try:
            async with asyncio.timeout(self._timeout_s):
                await self._redis.eval(_RELEASE, 1, lease.key.lock, lease.token)
                await self._redis.publish(FLIGHTS_CHANNEL, lease.key.digest)
        except (RedisError, OSError):
            log.debug("could not release a flight lock; it expires by itself")

    async def await_peer(self, key: CacheKey) -> bytes | None:
        """The entry a peer stored for `key`, or None once the peer is gone without one (it
        failed or crashed) or the wait bound has passed."""
        deadline = time.monotonic() + self._max_wait_s
        landed = self._landed.setdefault(key.digest, asyncio.Event())
        try:
            while True:
                try:
                    async with asyncio.timeout(self._timeout_s):
                        entry, lock = await self._redis.mget(key.entry, key.lock)
                except (RedisError, OSError):
                    return None
                if entry is not None:
                    return entry if isinstance(entry, bytes) else entry.encode()
                left = deadline - time.monotonic()
                if lock is None or left <= 0:
                    return None
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(_POLL_S, left)):
                        await landed.wait()
        finally:
            if self._landed.get(key.digest) is landed:
                del self._landed[key.digest]

    async def _renew(self, lease: Lease) -> None:
        while True:
            await asyncio.sleep(self._lock_ms / 3000)
            try:
                async with asyncio.timeout(self._timeout_s):
                    await self._redis.eval(_RENEW, 1, lease.key.lock, lease.token, self._lock_ms)
            except (RedisError, OSError):
                continue

    async def _listen(self) -> None:
        """Wakes local followers when a peer's flight lands; reconnects after Redis faults."""
        while True:
            try:
                async with self._redis.pubsub(ignore_subscribe_messages=True) as pubsub:
                    await pubsub.subscribe(FLIGHTS_CHANNEL)
                    async for message in pubsub.listen():
                        digest = message.get("data")
                        digest = digest.decode() if isinstance(digest, bytes) else digest
                        event = self._landed.get(digest) if isinstance(digest, str) else None
                        if event is not None:
                            event.set()
            except (RedisError, OSError):
                await asyncio.sleep(1.0)  # followers poll meanwhile
