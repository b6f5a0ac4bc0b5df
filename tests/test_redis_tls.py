"""Redis over TLS with an ACL user (issue 15, item 3): the basic hit/miss/invalidation cases run
against a TLS-only Redis (the existing tests, re-collected here with `any_sidecar` and
`any_admin_sidecar` pointing at it, with and without a client certificate), the lean pipe and
the near cache work over TLS, and a wrong CA, a wrong password, a missing client certificate or
plain text to the TLS port stop start-up with one clear line that never shows a password."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.cache.near_store import NearStore
from tests.admin_support import TOKENS
from tests.fixtures.redis_tls import PASSWORD, USER, TlsRedisServer
from tests.fixtures.replicas import Replica
from tests.fixtures.sidecar import Sidecar, SidecarFactory, Stub
from tests.invalidation_support import chat_status
from tests.test_chat_cache import test_completions_endpoint_both_ways, test_who_shares_an_entry
from tests.test_invalidation import (
    test_an_invalidated_persona_misses_and_others_still_hit,
    test_invalidate_all_and_by_endpoint,
)

# Collected here too, with this module's `any_sidecar` / `any_admin_sidecar`: parametrised, not
# copied (issue 15's "Done when").
REUSED = (
    test_who_shares_an_entry,
    test_completions_endpoint_both_ways,
    test_an_invalidated_persona_misses_and_others_still_hit,
    test_invalidate_all_and_by_endpoint,
)
EXIT_TIMEOUT_S = 30


@pytest.fixture(params=["tls", "tls+client-cert"])
def tls_env(
    request: pytest.FixtureRequest, tls_redis: TlsRedisServer, mtls_redis: TlsRedisServer
) -> dict[str, str]:
    """A sidecar's Redis settings: TLS + ACL user; or a server that requires a client
    certificate, and the certificate."""
    if request.param == "tls":
        return tls_redis.env()
    mtls_redis.start()
    mtls_redis.flushall()
    return mtls_redis.env(client_cert=True)


@pytest.fixture
def any_sidecar(make_sidecar: SidecarFactory, tls_env: dict[str, str]) -> Sidecar:
    return make_sidecar(**tls_env)


@pytest.fixture
def any_admin_sidecar(make_sidecar: SidecarFactory, tls_env: dict[str, str]) -> Sidecar:
    return make_sidecar(ADMIN_TOKENS=TOKENS, **tls_env)


def test_the_near_cache_is_armed_and_serves_hits(any_sidecar: Sidecar) -> None:
    url = any_sidecar.url
    store = any_sidecar.runtime.store
    assert isinstance(store, NearStore)
    assert chat_status(url, "Name a TLS cipher.") == "MISS"
    assert chat_status(url, "Name a TLS cipher.") == "HIT"
    near = store.near
    assert near.enabled  # tracking (CLIENT TRACKING over two TLS connections) is set up
    before = near.hits
    assert chat_status(url, "Name a TLS cipher.") == "HIT"
    assert near.hits == before + 1


def _start_and_fail(tmp_path: Path, stub: Stub, redis_url: str, **env: str) -> str:
    """Starts `python -m proxy serve` and expects it to exit at start-up; its stderr."""
    replica = Replica(tmp_path, "refused", redis_url, stub.url, env)
    try:
        code = replica.proc.wait(EXIT_TIMEOUT_S)
        stderr = replica.stderr()
    finally:
        replica.stop()
    assert code == 1, stderr
    return stderr


def test_an_untrusted_server_stops_start_up(
    tmp_path: Path, stub: Stub, tls_redis: TlsRedisServer
) -> None:
    stderr = _start_and_fail(
        tmp_path, stub, tls_redis.url, REDIS_CA_FILE=str(tls_redis.pki.other_ca)
    )
    assert f"TLS with Redis at 127.0.0.1:{tls_redis.port} failed" in stderr
    assert "certificate verify failed" in stderr
    assert "REDIS_CA_FILE=" in stderr
    assert PASSWORD not in stderr


def test_a_wrong_password_stops_start_up_without_showing_it(
    tmp_path: Path, stub: Stub, tls_redis: TlsRedisServer
) -> None:
    wrong = "not-the-Password-7"
    url = tls_redis.url.replace(PASSWORD, wrong)
    stderr = _start_and_fail(tmp_path, stub, url, REDIS_CA_FILE=str(tls_redis.pki.ca))
    assert f"refused REDIS_URL's credentials (user {USER!r})" in stderr
    assert wrong not in stderr and PASSWORD not in stderr


def test_a_wrong_password_stops_the_workers_supervisor_once(
    tmp_path: Path, stub: Stub, tls_redis: TlsRedisServer
) -> None:
    """With WORKERS=2 the supervisor checks first: no worker is started, then restarted."""
    url = tls_redis.url.replace(PASSWORD, "not-the-Password-7")
    stderr = _start_and_fail(tmp_path, stub, url, REDIS_CA_FILE=str(tls_redis.pki.ca), WORKERS="2")
    assert f"refused REDIS_URL's credentials (user {USER!r})" in stderr
    assert "worker" not in stderr


def test_plain_text_to_a_tls_port_stops_start_up(
    tmp_path: Path, stub: Stub, tls_redis: TlsRedisServer
) -> None:
    url = tls_redis.url.replace("rediss://", "redis://")
    stderr = _start_and_fail(tmp_path, stub, url)
    assert "speaks TLS: REDIS_URL must start with rediss://" in stderr
    assert PASSWORD not in stderr


def test_a_missing_client_certificate_stops_start_up(
    tmp_path: Path, stub: Stub, mtls_redis: TlsRedisServer
) -> None:
    mtls_redis.start()
    stderr = _start_and_fail(tmp_path, stub, mtls_redis.url, REDIS_CA_FILE=str(mtls_redis.pki.ca))
    assert f"TLS with Redis at 127.0.0.1:{mtls_redis.port} failed" in stderr
    assert "REDIS_CERT_FILE=None" in stderr
    assert PASSWORD not in stderr


def test_an_unreadable_ca_file_stops_start_up_naming_it(
    tmp_path: Path, stub: Stub, tls_redis: TlsRedisServer
) -> None:
    missing = str(tmp_path / "nowhere.pem")
    replica = Replica(tmp_path, "bad-file", tls_redis.url, stub.url, {"REDIS_CA_FILE": missing})
    try:
        code = replica.proc.wait(EXIT_TIMEOUT_S)
        stderr = replica.stderr()
    finally:
        replica.stop()
    assert code == 2, stderr  # a settings error
    assert f"REDIS_CA_FILE={missing!r}: no readable file there" in stderr
