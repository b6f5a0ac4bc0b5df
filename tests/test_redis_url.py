"""REDIS_URL read into a RedisTarget (proxy/cache/redis_url.py): every scheme and query parameter,
the settings errors that name REDIS_URL without showing it, and a unix socket end to end."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.cache.redis_link import RedisLink
from proxy.cache.redis_url import RedisTarget, TlsFiles, parse_redis_url
from proxy.settings import SettingsError
from proxy.settings_load import load_settings
from tests.fixtures.redis_server import RedisServer
from tests.fixtures.redis_tls import Pki
from tests.fixtures.sidecar import SidecarFactory
from tests.invalidation_support import chat_status

CASES: list[tuple[str, RedisTarget]] = [
    ("redis://localhost", RedisTarget("direct", (("localhost", 6379),))),
    (
        "redis://:pw%40x@10.0.0.1:6390/3",
        RedisTarget("direct", (("10.0.0.1", 6390),), password="pw@x", db=3),
    ),
    (
        "rediss://app:secret@redis.internal:6380/0?ssl_check_hostname=false",
        RedisTarget(
            "direct",
            (("redis.internal", 6380),),
            username="app",
            password="secret",
            tls=True,
            check_hostname=False,
        ),
    ),
    (
        "rediss://[::1]:6380?ssl_cert_reqs=none&db=2",
        RedisTarget("direct", (("::1", 6380),), db=2, tls=True, verify=False),
    ),
    ("unix:///run/redis.sock?db=1", RedisTarget("unix", (), unix_path="/run/redis.sock", db=1)),
    (
        "redis+sentinel://app:pw@s1:26379,s2,s3:26380/mymaster?db=4&sentinel_password=sp",
        RedisTarget(
            "sentinel",
            (("s1", 26379), ("s2", 26379), ("s3", 26380)),
            username="app",
            password="pw",
            db=4,
            service="mymaster",
            sentinel_password="sp",
        ),
    ),
    (
        "redis+sentinel://s1/mymaster/2?ssl=true&sentinel_ssl=false&sentinel_username=watch",
        RedisTarget(
            "sentinel",
            (("s1", 26379),),
            db=2,
            service="mymaster",
            sentinel_username="watch",
            tls=True,
        ),
    ),
]


@pytest.mark.parametrize(("url", "expected"), CASES)
def test_each_scheme_and_parameter(url: str, expected: RedisTarget) -> None:
    assert parse_redis_url(url) == expected


@pytest.mark.parametrize(
    ("url", "said"),
    [
        ("redis://h1,h2/0", "for several use redis+sentinel://"),
        ("redis+sentinel://s1:26379", "needs the service name"),
        ("redis://h/0?timeout=3", "unknown query parameter 'timeout'"),
        ("redis://h/0?ssl=true", "unknown query parameter 'ssl'"),  # rediss:// says TLS
        ("redis://h:port/0", "is not a number"),
        ("redis://h/zero", "must be a number"),
        ("rediss://h?ssl_cert_reqs=optional", "expected required or none"),
        ("redis+sentinel://s/m?ssl=maybe", "expected true or false"),
    ],
)
def test_a_malformed_url_stops_start_up_naming_it_without_showing_it(url: str, said: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings({"REDIS_URL": url.replace("://", "://user:hunter2@", 1)})
    message = str(caught.value)
    assert message.startswith("invalid setting REDIS_URL=<redacted>: ")
    assert said in message
    assert "hunter2" not in message


def test_a_key_without_its_certificate_is_refused() -> None:
    with pytest.raises(SettingsError, match="REDIS_KEY_FILE: it needs REDIS_CERT_FILE"):
        load_settings({"REDIS_URL": "rediss://h", "REDIS_KEY_FILE": __file__})


def test_one_ssl_context_for_every_connection(redis_pki: Pki) -> None:
    files = TlsFiles(str(redis_pki.ca), str(redis_pki.client_cert), str(redis_pki.client_key))
    link = RedisLink.from_url("rediss://u:p@127.0.0.1:6380/0", files)
    client = link.client(max_connections=2)
    first, second = (client.connection_pool.make_connection() for _ in range(2))
    assert link.tls is not None
    assert first._connection_arguments()["ssl"] is link.tls
    assert second._connection_arguments()["ssl"] is link.tls
    assert RedisLink.from_url("redis://127.0.0.1/0").tls is None


def test_a_unix_socket_serves_hits(tmp_path: Path, make_sidecar: SidecarFactory) -> None:
    socket_path = tmp_path / "redis.sock"
    with RedisServer(extra_args=["--unixsocket", str(socket_path)]):
        sidecar = make_sidecar(REDIS_URL=f"unix://{socket_path}?db=1")
        assert chat_status(sidecar.url, "Over a unix socket?") == "MISS"
        assert chat_status(sidecar.url, "Over a unix socket?") == "HIT"
