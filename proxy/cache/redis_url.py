"""REDIS_URL read once into a `RedisTarget`: which servers, which credentials, which database,
TLS or not (docs/design.md §12).

    redis://[user:password@]host[:port][/db]
    rediss://[user:password@]host[:port][/db]          TLS, verified by default
    unix:///path/to/redis.sock[?db=N]
    redis+sentinel://[user:password@]h1:26379[,h2:26379...]/service[/db]

Query parameters (any scheme unless said): `db`; `ssl_check_hostname=false` (verify the chain but
not the name); `ssl_cert_reqs=none` (no verification at all: only for a trusted network);
Sentinel only: `ssl=true` (TLS to the primary), `sentinel_ssl=true|false` (TLS to the sentinels,
default as `ssl`), `sentinel_username`, `sentinel_password`. The certificate files are settings
(REDIS_CA_FILE, REDIS_CERT_FILE, REDIS_KEY_FILE), not URL parts. Messages never show a password.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field, replace
from typing import Literal
from urllib.parse import parse_qsl, unquote

DEFAULT_PORT = 6379
SENTINEL_PORT = 26379
_TRUE, _FALSE = ("true", "yes", "1", "on"), ("false", "no", "0", "off")
_COMMON_PARAMS = frozenset({"db", "ssl_check_hostname", "ssl_cert_reqs"})
_SENTINEL_PARAMS = frozenset({"ssl", "sentinel_ssl", "sentinel_username", "sentinel_password"})

Kind = Literal["direct", "unix", "sentinel"]


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """REDIS_CA_FILE (else the system's CAs), REDIS_CERT_FILE and REDIS_KEY_FILE (a client
    certificate, for servers that ask for one)."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None


@dataclass(frozen=True, slots=True)
class RedisTarget:
    kind: Kind
    hosts: tuple[tuple[str, int], ...]  # the server, or the sentinels
    unix_path: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    db: int = 0
    service: str | None = None  # the Sentinel master name
    sentinel_username: str | None = None
    sentinel_password: str | None = field(default=None, repr=False)
    tls: bool = False  # to the Redis server (the primary, with Sentinel)
    sentinel_tls: bool = False
    verify: bool = True
    check_hostname: bool = True

    def where(self) -> str:
        """Where it points, for messages: no credentials."""
        if self.kind == "unix":
            return f"unix:{self.unix_path}"
        hosts = ",".join(f"{host}:{port}" for host, port in self.hosts)
        if self.kind == "sentinel":
            return f"sentinels {hosts} (service {self.service!r})"
        return hosts

    def tls_context(self, files: TlsFiles) -> ssl.SSLContext | None:
        """The one SSL context every connection of this process shares (None: plain text).
        Raises OSError / ssl.SSLError for unreadable or invalid files."""
        if not (self.tls or self.sentinel_tls):
            return None
        context = ssl.create_default_context(cafile=files.ca_file)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if not self.check_hostname or not self.verify:
            context.check_hostname = False
        if not self.verify:
            context.verify_mode = ssl.CERT_NONE
        if files.cert_file:
            context.load_cert_chain(files.cert_file, files.key_file)
        return context


def parse_redis_url(url: str) -> RedisTarget:
    """Raises ValueError with a message that never repeats the URL (it may hold a password)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ValueError("expected scheme://..., e.g. redis://localhost:6379/0")
    rest, _, query = rest.partition("?")
    params = _params(query, sentinel=scheme == "redis+sentinel")
    netloc, _, path = rest.partition("/")
    userinfo, at, hostlist = netloc.rpartition("@")
    username, password = _credentials(userinfo) if at else (None, None)
    base = RedisTarget(
        "direct",
        (),
        username=username,
        password=password,
        verify=_verify(params),
        check_hostname=_flag(params, "ssl_check_hostname", default=True),
    )
    if scheme in ("redis", "rediss"):
        db = _db(params.get("db") or path.strip("/") or "0")
        host = _hosts(hostlist or "localhost", DEFAULT_PORT)
        if len(host) != 1:
            raise ValueError(f"{scheme}:// takes one host; for several use redis+sentinel://")
        return replace(base, hosts=host, db=db, tls=scheme == "rediss")
    if scheme == "unix":
        if not path:
            raise ValueError("unix:// needs a socket path, e.g. unix:///run/redis.sock")
        db = _db(params.get("db", "0"))
        return replace(base, kind="unix", unix_path="/" + path, db=db)
    if scheme == "redis+sentinel":
        service, _, db_part = path.partition("/")
        if not service:
            raise ValueError("redis+sentinel:// needs the service name: .../mymaster")
        tls = _flag(params, "ssl", default=False)
        return replace(
            base,
            kind="sentinel",
            hosts=_hosts(hostlist, SENTINEL_PORT),
            db=_db(params.get("db") or db_part.strip("/") or "0"),
            service=unquote(service),
            sentinel_username=params.get("sentinel_username"),
            sentinel_password=params.get("sentinel_password"),
            tls=tls,
            sentinel_tls=_flag(params, "sentinel_ssl", default=tls),
        )
    raise ValueError("the scheme must be redis://, rediss://, unix:// or redis+sentinel://")


def _params(query: str, *, sentinel: bool) -> dict[str, str]:
    allowed = _COMMON_PARAMS | _SENTINEL_PARAMS if sentinel else _COMMON_PARAMS
    params = dict(parse_qsl(query, keep_blank_values=True))
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise ValueError(
            f"unknown query parameter {unknown[0]!r}; allowed: {', '.join(sorted(allowed))}"
        )
    return params


def _credentials(userinfo: str) -> tuple[str | None, str | None]:
    user, colon, password = userinfo.partition(":")
    if not colon:  # redis://secret@host: redis-py reads a lone part as the password
        return None, unquote(user) or None
    return unquote(user) or None, unquote(password)


def _hosts(hostlist: str, default_port: int) -> tuple[tuple[str, int], ...]:
    hosts: list[tuple[str, int]] = []
    for item in hostlist.split(","):
        if item.startswith("["):  # [::1]:6379
            host, _, port = item[1:].partition("]")
            port = port.removeprefix(":")
        else:
            host, _, port = item.partition(":")
        if not host:
            raise ValueError("a host is missing")
        if port and not port.isdigit():
            raise ValueError(f"port {port!r} of host {host!r} is not a number")
        hosts.append((host, int(port) if port else default_port))
    return tuple(hosts)


def _db(raw: str) -> int:
    if not raw.isdigit():
        raise ValueError(f"the database must be a number, not {raw!r}")
    return int(raw)


def _flag(params: dict[str, str], name: str, *, default: bool) -> bool:
    raw = params.get(name, "").lower()
    if not raw:
        return default
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise ValueError(f"{name}={raw!r}: expected true or false")


def _verify(params: dict[str, str]) -> bool:
    raw = params.get("ssl_cert_reqs", "required").lower()
    if raw not in ("required", "none"):
        raise ValueError(f"ssl_cert_reqs={raw!r}: expected required or none")
    return raw == "required"
