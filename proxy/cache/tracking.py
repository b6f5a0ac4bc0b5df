"""Keeps the near cache right: Redis server-assisted client-side caching, broadcast mode.

Why Redis' own invalidation messages (`CLIENT TRACKING ... BCAST`) rather than notices the
sidecar would publish itself: Redis reports every change to a key under the tracked prefixes,
whoever makes it. Other replicas' new entries and overwrites, an operator's DEL, expiry and
eviction inside Redis, FLUSHALL/FLUSHDB (one null "flush everything" message) are all covered
with no change to any writer, and a writer that forgets to publish cannot exist.

How it is connected (RESP2, two connections per process, both plain asyncio protocols so that a
message is applied inside `data_received`, with no task hop in between):
- the subscriber: `CLIENT ID`, then `SUBSCRIBE __redis__:invalidate`;
- the tracker: `CLIENT TRACKING ON REDIRECT <subscriber id> BCAST PREFIX sc:e: PREFIX
  sc:{inv}:gen NOLOOP`. It sends nothing else (so NOLOOP changes nothing: this process's own
  writes go through other connections and are reported back like anyone's; `NearStore.put`
  drops its key at once anyway).

A message naming an entry key drops it; one naming the invalidation generation key (every
invalidation rule, persona-change flushes included) or a null one clears the near cache: rules
are checked against an entry's meta using the shared generation each Redis read brings, which a
near hit does not read, so after a clear the next read from Redis lets the Invalidator catch up.

The near cache is served only while both connections are up and confirmed: losing either
(Redis down or restarted, a network fault) clears and bypasses it at once, in the callback that
sees the loss; a background task reconnects with backoff and re-enables it once tracking is
confirmed again, so an entry from before a restart is never served.

Ordering, "the very next request after an invalidation returns": Redis queues the broadcast in
its event loop's `beforeSleep` before it writes the writer's reply, so the message is in this
process' socket before the writer hears OK (and so before any client can send the next request);
here it is applied in the read callback, which runs before an HTTP request read in the same
turn of the loop reaches its handler (aiohttp needs at least one more turn).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, cast

import hiredis

from proxy.cache.near import NearCache
from proxy.cache.pipe import command
from proxy.cache.redis_link import RedisLink
from proxy.vocabulary import ENTRY_KEY, INVALIDATION_GENERATION_KEY

log = logging.getLogger("sidecache.cache")

CHANNEL = b"__redis__:invalidate"
ENTRY_PREFIX = ENTRY_KEY.partition("{")[0].encode()  # b"sc:e:"
_GENERATION = INVALIDATION_GENERATION_KEY.encode()
_FIRST_BACKOFF_S = 0.05
_MAX_BACKOFF_S = 2.0


class TrackingError(ConnectionError):
    """Redis refused to set up tracking (or answered something unexpected)."""


class _Resp(asyncio.Protocol):
    """A connection whose replies (and pushed messages) go to `on_reply` as they are parsed."""

    def __init__(self, on_reply: Callable[[Any], None], on_lost: Callable[[], None]) -> None:
        self.reader = hiredis.Reader()
        self.transport: asyncio.Transport | None = None
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._on_reply = on_reply
        self._on_lost = on_lost

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while (reply := self.reader.gets()) is not False:
            self._on_reply(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._on_lost()
        if not self.lost.done():
            self.lost.set_result(None)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.abort()


class TrackingListener:
    def __init__(self, link: RedisLink, near: NearCache, timeout_s: float) -> None:
        self._link = link
        self._hello = link.hello
        self._near = near
        self._timeout_s = timeout_s
        self._setup: asyncio.Queue[Any] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._open: list[_Resp] = []

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="near-cache-tracking")

    async def close(self) -> None:
        self._near.disable()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for connection in self._open:
            connection.close()

    async def _run(self) -> None:
        backoff = _FIRST_BACKOFF_S
        last_failure = ""
        while True:
            try:
                await self._session()
                backoff, last_failure = _FIRST_BACKOFF_S, ""  # it was up; a loss retries soon
            except (OSError, TimeoutError) as exc:
                failure = f"{type(exc).__name__}: {exc}"
                if failure != last_failure:  # once per kind of failure, not once per retry
                    log.warning("near cache off, Redis tracking not set up: %s", failure)
                last_failure = failure
            finally:
                self._near.disable()
                for connection in self._open:
                    connection.close()
                self._open.clear()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, _MAX_BACKOFF_S)

    async def _session(self) -> None:
        self._setup = asyncio.Queue()
        subscriber = await self._connect(self._on_message)
        subscriber.transport.write(  # type: ignore[union-attr]
            b"".join([*self._hello, command(b"CLIENT", b"ID"), command(b"SUBSCRIBE", CHANNEL)])
        )
        for _ in self._hello:
            await self._reply()
        client_id = await self._reply()
        if not isinstance(client_id, int) or (await self._reply())[:1] != [b"subscribe"]:
            raise TrackingError("Redis did not subscribe the invalidation channel")
        tracker = await self._connect(self._setup.put_nowait)
        tracker.transport.write(  # type: ignore[union-attr]
            b"".join(
                [
                    *self._hello,
                    command(b"CLIENT", b"TRACKING", b"ON", b"REDIRECT", b"%d" % client_id,
                            b"BCAST", b"PREFIX", ENTRY_PREFIX, b"PREFIX", _GENERATION,
                            b"NOLOOP"),
                ]
            )
        )  # fmt: skip
        for _ in self._hello:
            await self._reply()
        if await self._reply() != b"OK":
            raise TrackingError("Redis refused CLIENT TRACKING")
        self._near.enable()
        log.info("near cache on: Redis reports changes to cached keys")
        await asyncio.wait([subscriber.lost, tracker.lost], return_when=asyncio.FIRST_COMPLETED)
        log.warning("near cache off until Redis tracking is set up again")

    async def _connect(self, on_reply: Callable[[Any], None]) -> _Resp:
        async with asyncio.timeout(self._timeout_s):
            # With Sentinel, each (re)connection asks for the current primary: after a failover
            # tracking is armed again on the new one.
            protocol = await self._link.open(lambda: _Resp(on_reply, self._near.disable))
        self._open.append(protocol)
        return protocol

    async def _reply(self) -> Any:
        async with asyncio.timeout(self._timeout_s):
            reply = await self._setup.get()
        if isinstance(reply, hiredis.ReplyError):
            raise TrackingError(str(reply))
        return reply

    def _on_message(self, reply: Any) -> None:
        """Every reply of the subscriber: its setup's, then invalidation messages."""
        if not (isinstance(reply, list) and len(reply) == 3 and reply[0] == b"message"):
            self._setup.put_nowait(reply)
            return
        keys = reply[2]
        near = self._near
        if not isinstance(keys, list):  # null: FLUSHALL / FLUSHDB
            near.clear()
            return
        for key in keys:
            if key == _GENERATION:
                near.clear()
            else:
                near.drop(key.decode())
