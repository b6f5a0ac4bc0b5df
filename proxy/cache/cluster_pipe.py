"""The hit path's GETs on a Redis Cluster: each key goes to the primary serving its slot, on one
pipelined connection per primary (proxy/cache/pipe.py), so a hit is still one round trip.

Keys in different slots (an entry and the invalidation generation) are sent to their nodes at
once and awaited together: one round-trip time. A MOVED reply updates the slot and is retried
there (the whole map is re-read in the background); an ASK reply is retried once on the node it
names, after ASKING. A node that fails turns its keys into misses and has the map re-read (at
most every `_REFRESH_EVERY_S`), so the keys follow a promoted replica within that time.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Sequence
from typing import TYPE_CHECKING, Any

from proxy.cache.pipe import PipeError, RedisPipe, command
from proxy.cache.slots import Address, SlotMap, keyslot, parse_redirect

if TYPE_CHECKING:
    from proxy.cache.redis_link import RedisLink

log = logging.getLogger("sidecache.cache")

_REFRESH_EVERY_S = 0.25
_CLUSTER_SLOTS = command(b"CLUSTER", b"SLOTS")
_ASKING = command(b"ASKING")


class ClusterPipe:
    def __init__(self, link: RedisLink, timeout_s: float) -> None:
        self._link = link  # credentials and TLS for every node's connection
        self._seed: Address = link.target.hosts[0]
        self._timeout_s = timeout_s
        self._map: SlotMap | None = None
        self._pipes: dict[Address, RedisPipe] = {}
        self._refreshing: asyncio.Task[None] | None = None
        self._last_refresh = -_REFRESH_EVERY_S

    async def start(self) -> None:
        """Reads the slot map once; without it the first GETs are misses until it is read."""
        self._last_refresh = time.monotonic()
        await self._refresh()

    async def get(self, key: str) -> bytes | None:
        return (await self.mget(key))[0]

    async def mget(self, *keys: str) -> list[bytes | None]:
        """Each key from its own node, all sent before any is awaited (keys need not share a
        slot): one round-trip time, and no Task per key."""
        requests = []
        for key in keys:
            encoded = key.encode()
            request = b"*2\r\n$3\r\nGET\r\n$%d\r\n%s\r\n" % (len(encoded), encoded)
            requests.append((request, self._send(encoded, request)))
        values: list[bytes | None] = []
        failure: PipeError | None = None
        for request, sent in requests:  # every reply awaited, even after a failure
            try:
                reply = await self._answer(request, sent)
            except PipeError as exc:
                failure = exc
                continue
            values.append(reply if reply is None or isinstance(reply, bytes) else None)
        if failure is not None:
            raise failure
        return values

    async def mget_pttl(self, *keys: str) -> tuple[list[bytes | None], int]:
        first = keys[0].encode()
        pttl_request = command(b"PTTL", first)
        pttl_sent = self._send(first, pttl_request)
        try:
            values = await self.mget(*keys)
        finally:
            pttl = await self._answer(pttl_request, pttl_sent)
        if not isinstance(pttl, int):
            raise PipeError("Redis answered PTTL with something else than a number")
        return values, pttl

    def _send(self, key: bytes, request: bytes) -> Awaitable[Any]:
        """`request` sent now to the primary serving `key`'s slot (or, not connected yet, a
        coroutine that connects and sends it)."""
        address = self._map.node_of(keyslot(key)) if self._map is not None else None
        if address is None:
            self._refresh_soon()
            return _failed("no Redis Cluster node serves this key's slot (yet)")
        pipe = self._pipe(address)
        sent = pipe.send_nowait(request)
        return sent if sent is not None else _first(pipe, request)

    async def _answer(self, request: bytes, sent: Awaitable[Any]) -> Any:
        """The reply to `request`, following a MOVED or ASK redirection once."""
        try:
            return await sent
        except PipeError as exc:
            redirect = parse_redirect(str(exc), self._seed[0])
            if redirect is None:
                self._refresh_soon()  # a node down or the cluster reconfiguring
                raise
        kind, slot, target = redirect
        if kind == "ASK":
            return (await self._pipe(target).execute(_ASKING, request))[1]
        if self._map is not None:
            self._map.moved(slot, target)
        self._refresh_soon()
        return (await self._pipe(target).execute(request))[0]

    def _pipe(self, address: Address) -> RedisPipe:
        pipe = self._pipes.get(address)
        if pipe is None:
            pipe = self._pipes[address] = RedisPipe(self._link.at(*address), self._timeout_s)
        return pipe

    def _refresh_soon(self) -> None:
        now = time.monotonic()
        if self._refreshing is None and now - self._last_refresh >= _REFRESH_EVERY_S:
            self._last_refresh = now
            self._refreshing = asyncio.ensure_future(self._refresh())
            self._refreshing.add_done_callback(self._refreshed)

    def _refreshed(self, task: asyncio.Task[None]) -> None:
        self._refreshing = None

    async def _refresh(self) -> None:
        """The map from the first node that answers: the known primaries, then the seed."""
        known = self._map.primaries if self._map is not None else []
        for address in [*known, self._seed]:
            try:
                reply = (await self._pipe(address).execute(_CLUSTER_SLOTS))[0]
                slot_map = SlotMap.parse(reply, address[0])
            except (PipeError, ValueError, IndexError, TypeError):
                continue
            self._map = slot_map
            self._drop_unused(slot_map.primaries)
            return
        log.warning("no Redis Cluster node answered CLUSTER SLOTS; cache reads are misses")

    def _drop_unused(self, primaries: Sequence[Address]) -> None:
        for address in [a for a in self._pipes if a not in primaries and a != self._seed]:
            self._pipes.pop(address).close()

    def close(self) -> None:
        if self._refreshing is not None:
            self._refreshing.cancel()
        for pipe in self._pipes.values():
            pipe.close()
        self._pipes.clear()


async def _first(pipe: RedisPipe, request: bytes) -> Any:
    return (await pipe.execute(request))[0]


def _failed(message: str) -> asyncio.Future[Any]:
    future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    future.set_exception(PipeError(message))
    return future
