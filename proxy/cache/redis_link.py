"""How this process reaches its Redis, built once at start-up from REDIS_URL and the TLS files:
the redis-py pool (plain, TLS or Sentinel-managed), raw connections to the current primary for
the lean pipe and the near cache's tracking, and the start-up check that stops on a refusal no
retry can fix (a wrong password, an untrusted certificate, plain text to a TLS port).

With Sentinel every new connection asks the sentinels for the primary first, so a connection
lost in a failover comes back on the new primary; redis-py's Sentinel pool does the same for
its own connections (and turns a READONLY reply from a demoted primary into a reconnect).
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import logging
import re
import socket
import ssl
from collections.abc import Callable
from typing import Any, TypeVar

from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.connection import Connection, SSLConnection, UnixDomainSocketConnection
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import (
    MasterNotFoundError,
    Sentinel,
    SentinelConnectionPool,
    SentinelManagedConnection,
)
from redis.backoff import NoBackoff
from redis.exceptions import AuthenticationError, RedisError

from proxy.cache.pipe import command
from proxy.cache.redis_url import RedisTarget, TlsFiles, parse_redis_url

log = logging.getLogger("sidecache.cache")

P = TypeVar("P", bound=asyncio.BaseProtocol)
_REFUSALS = ("NOAUTH", "WRONGPASS", "NOPERM", "invalid username-password")
_SENTINEL_REFUSAL = re.compile(r"(?:NOAUTH|WRONGPASS|NOPERM|invalid username-password)[^.]*")
_SENTINEL_TLS = re.compile(r"\[SSL[^\]]*\][^(]*")


class RedisRefused(ConnectionError):
    """Redis (or a sentinel) refused this sidecar for a reason no retry fixes: start-up stops."""


class _TlsConnection(SSLConnection):
    """redis-py's TLS connection, with the process' one SSL context rather than one per
    connection."""

    def __init__(self, *, tls_context: ssl.SSLContext, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._tls_context = tls_context

    def _connection_arguments(self) -> dict[str, Any]:
        arguments = dict(Connection._connection_arguments(self))
        arguments["ssl"] = self._tls_context
        return arguments


class _SentinelTlsConnection(SentinelManagedConnection, _TlsConnection):
    pass


class RedisLink:
    def __init__(self, target: RedisTarget, files: TlsFiles, timeout_s: float) -> None:
        """Raises OSError / ssl.SSLError when the TLS files cannot be loaded."""
        self.target = target
        self.files = files
        self._timeout_s = timeout_s
        self.tls = target.tls_context(files)
        self.hello = _hello(target)
        self._sentinel: Sentinel | None = None
        if target.kind == "sentinel":
            self._sentinel = Sentinel(list(target.hosts), sentinel_kwargs=self._sentinel_kwargs())

    def at(self, host: str, port: int) -> RedisLink:
        """The same credentials, db and TLS context, to one given server (a cluster node)."""
        node = copy.copy(self)
        node.target = dataclasses.replace(self.target, kind="direct", hosts=((host, port),))
        node._sentinel = None
        return node

    @classmethod
    def from_url(cls, url: str, files: TlsFiles | None = None, timeout_s: float = 0.5) -> RedisLink:
        """Raises ValueError for a malformed URL (the message never repeats it)."""
        return cls(parse_redis_url(url), files or TlsFiles(), timeout_s)

    def client(self, **options: Any) -> Redis:
        """A redis-py client on this target; `options` are the pool's (timeouts, size)."""
        target = self.target
        options.update(db=target.db, username=target.username, password=target.password)
        options.setdefault("retry", Retry(NoBackoff(), 0))
        if self.tls is not None and target.tls:
            options["tls_context"] = self.tls
        if self._sentinel is not None:
            assert target.service is not None
            sentinel_class = _SentinelTlsConnection if target.tls else SentinelManagedConnection
            managed = SentinelConnectionPool(  # type: ignore[no-untyped-call]
                target.service, self._sentinel, connection_class=sentinel_class, **options
            )
            return Redis(connection_pool=managed)
        if target.kind == "unix":
            unix = ConnectionPool(
                connection_class=UnixDomainSocketConnection, path=target.unix_path, **options
            )
            return Redis(connection_pool=unix)
        (host, port) = target.hosts[0]
        connection_class: type[Connection] = _TlsConnection if target.tls else Connection
        pool = ConnectionPool(connection_class=connection_class, host=host, port=port, **options)
        return Redis(connection_pool=pool)

    async def primary(self) -> tuple[str, int]:
        """The server to talk to: the URL's, or the primary the sentinels name now."""
        if self._sentinel is None:
            return self.target.hosts[0]
        assert self.target.service is not None
        try:
            host, port = await self._sentinel.discover_master(self.target.service)
        except RedisError as exc:
            raise ConnectionError(f"no primary from the sentinels: {type(exc).__name__}") from None
        return str(host), int(port)

    async def open(self, factory: Callable[[], P]) -> P:
        """A raw connection to the primary (TLS when the URL says so); the caller sends
        `hello` (AUTH, SELECT) first."""
        loop = asyncio.get_running_loop()
        if self.target.kind == "unix":
            assert self.target.unix_path is not None
            _, unix = await loop.create_unix_connection(factory, self.target.unix_path)
            return unix
        host, port = await self.primary()
        tls = self.tls if self.target.tls else None
        _, protocol = await loop.create_connection(factory, host, port, ssl=tls)
        return protocol

    async def verify(self, client: Redis) -> None:
        """Stops start-up (RedisRefused) on a wrong password, a failed TLS handshake or plain
        text to a TLS port. An unreachable Redis does not stop it: the sidecar serves as a
        pass-through until Redis is back, as always."""
        try:
            async with asyncio.timeout(max(self._timeout_s, 2.0)):
                await client.ping()
        except (RedisError, OSError, TimeoutError) as exc:
            refusal = self._refusal(exc) or await self._diagnose()
            if refusal is not None:
                raise RedisRefused(refusal) from None
            where, reason = self.target.where(), self._scrub(str(exc))
            log.warning("Redis at %s unreachable at start-up: %s", where, reason)

    def _refusal(self, exc: BaseException) -> str | None:
        where, reason = self.target.where(), self._scrub(str(exc))
        if isinstance(exc, AuthenticationError) or (
            isinstance(exc, RedisError) and reason.startswith(_REFUSALS)
        ):
            user = self.target.username or "default"
            return f"Redis at {where} refused REDIS_URL's credentials (user {user!r}): {reason}"
        if isinstance(exc, MasterNotFoundError):  # one part per sentinel: say the first
            refused = _SENTINEL_REFUSAL.search(reason)
            if refused is not None:
                return (
                    f"the {where} refused REDIS_URL's sentinel_username/sentinel_password: "
                    f"{refused.group(0)}"
                )
            tls = _SENTINEL_TLS.search(reason)
            if tls is not None:
                return self._tls_refusal(where, tls.group(0).strip())
            return None
        if _is_tls_failure(exc) or "SSL" in reason:
            return self._tls_refusal(where, reason)
        return None

    async def _diagnose(self) -> str | None:
        """What a failed start-up PING hides: asyncio (uvloop above all) reports a TLS alert
        sent after the handshake (TLS 1.3: "certificate required") as a closed connection, and
        a TLS port answering plain text just closes. One blocking probe, at start-up only."""
        target = self.target
        if target.kind == "unix" or (target.kind == "sentinel" and not target.tls):
            return None
        try:
            host, port = await self.primary()
        except OSError:
            return None
        where = f"{host}:{port}"
        if target.tls:
            assert self.tls is not None
            reason = await asyncio.to_thread(_tls_failure, host, port, self.tls, self._timeout_s)
            return self._tls_refusal(where, reason) if reason else None
        probe = ssl.create_default_context()
        probe.check_hostname, probe.verify_mode = False, ssl.CERT_NONE
        if await asyncio.to_thread(_tls_failure, host, port, probe, self._timeout_s) is None:
            return f"Redis at {where} speaks TLS: REDIS_URL must start with rediss://"
        return None

    def _tls_refusal(self, where: str, reason: str) -> str:
        files = self.files
        hint = ""
        if files.cert_file is None and "verify failed" not in reason:
            hint = "; does the server require a client certificate (REDIS_CERT_FILE)?"
        return (
            f"TLS with Redis at {where} failed: {reason} (REDIS_CA_FILE={files.ca_file!r}, "
            f"REDIS_CERT_FILE={files.cert_file!r}){hint}"
        )

    def _scrub(self, text: str) -> str:
        for secret in (self.target.password, self.target.sentinel_password):
            if secret:
                text = text.replace(secret, "<redacted>")
        return text

    def _sentinel_kwargs(self) -> dict[str, Any]:
        target, files = self.target, self.files
        kwargs: dict[str, Any] = {
            "socket_timeout": self._timeout_s,
            "socket_connect_timeout": self._timeout_s,
            "username": target.sentinel_username,
            "password": target.sentinel_password,
        }
        if target.sentinel_tls:  # redis-py's own TLS options: a few connections, at discovery
            kwargs.update(
                ssl=True,
                ssl_ca_certs=files.ca_file,
                ssl_certfile=files.cert_file,
                ssl_keyfile=files.key_file,
                ssl_cert_reqs="required" if target.verify else "none",
                ssl_check_hostname=target.verify and target.check_hostname,
            )
        return kwargs


def _hello(target: RedisTarget) -> list[bytes]:
    """AUTH and SELECT, for the raw connections."""
    hello: list[bytes] = []
    if target.password is not None:
        user = (target.username or "default").encode()
        hello.append(command(b"AUTH", user, target.password.encode()))
    if target.db:
        hello.append(command(b"SELECT", b"%d" % target.db))
    return hello


def _tls_failure(host: str, port: int, context: ssl.SSLContext, timeout_s: float) -> str | None:
    """A TLS handshake and one PING: the TLS error, if any ("" when the server does not
    speak TLS at all); None when TLS works (whatever Redis answers)."""
    try:
        raw = socket.create_connection((host, port), max(timeout_s, 1.0))
        with raw, context.wrap_socket(raw, server_hostname=host) as tls:
            tls.sendall(b"*1\r\n$4\r\nPING\r\n")
            tls.recv(64)
    except ssl.SSLError as exc:
        return str(exc)
    except OSError:
        return ""
    return None


def _is_tls_failure(exc: BaseException | None) -> bool:
    seen = 0
    while exc is not None and seen < 5:
        if isinstance(exc, ssl.SSLError):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False
