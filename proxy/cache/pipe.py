"""A pipelined Redis connection for the hit path's one command, GET (and the rate limiter's
check sent with it).

redis-py spends most of a hit's time in its pool, its per-command bookkeeping and (with a socket
timeout) a Task per command (docs/design.md §9). Here every GET is written to one connection as it
comes and replies are matched in order by hiredis: no pool, no lock, no extra task. Anything else
(writes, pipelines, scripts, pub/sub) stays with redis-py. A failure or timeout closes the
connection, failing what is pending; the next GET reconnects.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, cast

import hiredis

if TYPE_CHECKING:
    from proxy.cache.redis_link import RedisLink

# Replies that say this server is not (or not yet) a usable primary: drop the connection, so the
# next command reconnects to whatever the URL (or the sentinels) name now.
_NOT_PRIMARY = ("READONLY", "LOADING", "MASTERDOWN")


class PipeError(ConnectionError):
    """The connection failed, timed out, or Redis answered with an error."""


class _Protocol(asyncio.Protocol):
    """One connection: commands go out in order, replies are matched to them in order.

    Every command must be answered within `timeout_s`; a watchdog (one timer per connection,
    not one per command) aborts the connection when the oldest is late, failing all pending.
    """

    def __init__(self, timeout_s: float) -> None:
        self.reader = hiredis.Reader()
        self.pending: collections.deque[tuple[asyncio.Future[Any], float]] = collections.deque()
        self.transport: asyncio.Transport | None = None
        self._timeout_s = timeout_s
        self._outgoing: list[bytes] = []
        self._watchdog: asyncio.TimerHandle | None = None
        self._lost_reason = "connection to Redis lost"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, so no isinstance check here.
        self.transport = cast(asyncio.Transport, transport)

    def send(self, request: bytes) -> asyncio.Future[Any]:
        """Queues a command; every command queued in one turn of the loop goes out in one
        write (a syscall costs more than a GET on this path)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self.pending.append((future, loop.time() + self._timeout_s))
        if not self._outgoing:
            loop.call_soon(self._flush)
        self._outgoing.append(request)
        if self._watchdog is None:
            self._watchdog = loop.call_later(self._timeout_s, self._check_late)
        return future

    def _flush(self) -> None:
        outgoing, self._outgoing = self._outgoing, []
        if self.transport is not None:
            self.transport.write(b"".join(outgoing))

    def _check_late(self) -> None:
        self._watchdog = None
        if not self.pending or self.transport is None:
            return
        loop = asyncio.get_running_loop()
        late_by = loop.time() - self.pending[0][1]
        if late_by >= 0:
            self._lost_reason = "Redis did not answer in time"
            self.transport.abort()
        else:
            self._watchdog = loop.call_later(-late_by, self._check_late)

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while (reply := self.reader.gets()) is not False:
            future, _ = self.pending.popleft()
            if future.done():
                continue  # its caller gave up; the reply still kept the order
            if isinstance(reply, hiredis.ReplyError):
                future.set_exception(PipeError(str(reply)))
                if str(reply).startswith(_NOT_PRIMARY) and self.transport is not None:
                    self.transport.abort()
            else:
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self._watchdog is not None:
            self._watchdog.cancel()
        while self.pending:
            future, _ = self.pending.popleft()
            if not future.done():
                future.set_exception(PipeError(self._lost_reason))


def command(*parts: bytes) -> bytes:
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        out.append(b"$%d\r\n%s\r\n" % (len(part), part))
    return b"".join(out)


class RedisPipe:
    def __init__(self, link: RedisLink, timeout_s: float) -> None:
        self._link = link
        self._timeout_s = timeout_s
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Task[_Protocol] | None = None

    async def get(self, key: str) -> bytes | None:
        key_bytes = key.encode()
        request = b"*2\r\n$3\r\nGET\r\n$%d\r\n%s\r\n" % (len(key_bytes), key_bytes)
        reply = await self._send(request)
        return reply if reply is None or isinstance(reply, bytes) else None

    async def mget(self, *keys: str) -> list[bytes | None]:
        """Several keys in one command (so in one reply); the keys must live on one server."""
        reply = await self._send(command(b"MGET", *(key.encode() for key in keys)))
        if not isinstance(reply, list) or len(reply) != len(keys):
            raise PipeError("Redis answered MGET with something else than its values")
        return [value if isinstance(value, bytes) else None for value in reply]

    async def mget_pttl(self, *keys: str) -> tuple[list[bytes | None], int]:
        """MGET and the first key's remaining TTL (ms; negative when it has none or is gone):
        two commands in one write, so one round trip (the near cache's fill)."""
        reply, pttl = await self._send_two(
            command(b"MGET", *(key.encode() for key in keys)), command(b"PTTL", keys[0].encode())
        )
        if not isinstance(reply, list) or len(reply) != len(keys) or not isinstance(pttl, int):
            raise PipeError("Redis answered MGET/PTTL with something else than their values")
        return [value if isinstance(value, bytes) else None for value in reply], pttl

    def send_nowait(self, request: bytes) -> asyncio.Future[Any] | None:
        """The command queued at once on the live connection, its reply's future (failing with
        PipeError only); None when not connected (then `execute` connects first). For the
        cluster pipe, which awaits commands to several nodes without a Task for each."""
        protocol = self._protocol
        if protocol is None or protocol.transport is None:
            return None
        return protocol.send(request)

    async def execute(self, *requests: bytes) -> list[Any]:
        """Raw commands (built with `command`) in one write; their replies, in order (an error
        reply raises PipeError). The cluster pipe's ASKING and CLUSTER SLOTS."""
        protocol = self._protocol
        if protocol is None or protocol.transport is None:
            protocol = await self._reconnect()
        if len(requests) == 1:
            return [await protocol.send(requests[0])]  # no gather on the hit path
        return list(await asyncio.gather(*(protocol.send(request) for request in requests)))

    def send_now(self, request: bytes) -> Awaitable[Any]:
        """Any one command (encoded: `command`), queued in this turn of the loop when connected
        (so it goes out in the same write as the hit's GET queued next to it); else sent once
        connected."""
        protocol = self._protocol
        if protocol is not None and protocol.transport is not None:
            return protocol.send(request)
        return self._send(request)

    async def _send_two(self, first: bytes, second: bytes) -> tuple[Any, Any]:
        protocol = self._protocol
        if protocol is None or protocol.transport is None:
            protocol = await self._reconnect()
        # gather: when both fail, the second failure is retrieved too (no stray warning).
        both = await asyncio.gather(protocol.send(first), protocol.send(second))
        return both[0], both[1]

    async def _send(self, request: bytes) -> Any:
        protocol = self._protocol
        if protocol is None or protocol.transport is None:
            protocol = await self._reconnect()
        return await protocol.send(request)  # fails with PipeError only

    async def _reconnect(self) -> _Protocol:
        try:
            async with asyncio.timeout(self._timeout_s):
                return await self._connect()
        except TimeoutError:
            raise PipeError("Redis did not accept a connection in time") from None
        except PipeError:
            raise
        except OSError as exc:
            raise PipeError(str(exc)) from None

    def close(self) -> None:
        if self._protocol is not None and self._protocol.transport is not None:
            self._protocol.transport.abort()
        self._protocol = None

    async def _connect(self) -> _Protocol:
        """One connection attempt at a time, shared by every GET that needs it."""
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._open())
        try:
            return await asyncio.shield(self._connecting)
        finally:
            if self._connecting is not None and self._connecting.done():
                self._connecting = None

    async def _open(self) -> _Protocol:
        timeout_s = self._timeout_s
        protocol = await self._link.open(lambda: _Protocol(timeout_s))
        for hello in self._link.hello:
            await protocol.send(hello)
        self._protocol = protocol
        return protocol
