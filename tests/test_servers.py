"""The private database servers behave as fault tests need them to (tests/fixtures/servers.py)."""

from __future__ import annotations

import asyncpg
import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.fixtures.servers import PostgresServer, RedisServer

SYSTEM_PORTS = {6379, 5432}


def fast_client(url: str) -> redis.Redis:
    return redis.Redis.from_url(
        url, socket_timeout=0.5, socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0)
    )


def test_redis_url_answers_ping_on_a_private_port(
    redis_url: str, redis_server: RedisServer
) -> None:
    assert redis_url == f"redis://127.0.0.1:{redis_server.port}/0"
    assert redis_server.port not in SYSTEM_PORTS
    with fast_client(redis_url) as client:
        assert client.ping() is True
        client.set("left-behind", "1")


def test_redis_url_starts_empty(redis_url: str) -> None:
    with fast_client(redis_url) as client:
        assert client.dbsize() == 0


def test_stopping_the_session_redis_refuses_connections(redis_server: RedisServer) -> None:
    redis_server.stop()
    assert not redis_server.is_running
    with fast_client(redis_server.url) as client, pytest.raises(redis.ConnectionError):
        client.ping()


def test_redis_url_brings_a_stopped_session_redis_back(
    redis_server: RedisServer, redis_url: str
) -> None:
    assert redis_server.is_running
    with fast_client(redis_url) as client:
        assert client.ping() is True


def test_private_redis_stops_and_restarts_on_the_same_port(private_redis: RedisServer) -> None:
    port = private_redis.port
    with fast_client(private_redis.url) as client:
        client.set("k", "v")
        private_redis.stop()
        with pytest.raises(redis.ConnectionError):
            client.ping()
        private_redis.start()
        assert private_redis.port == port
        assert client.ping() is True
        assert client.get("k") is None  # no persistence: a restart is a cold cache


def test_private_redis_restart_and_flushall(private_redis: RedisServer) -> None:
    with fast_client(private_redis.url) as client:
        private_redis.restart()
        client.set("k", "v")
        private_redis.flushall()
        assert client.dbsize() == 0


def test_redis_extra_args_reach_the_server() -> None:
    with (
        RedisServer(extra_args=["--notify-keyspace-events", "Ex"]) as server,
        fast_client(server.url) as client,
    ):
        events = client.config_get("notify-keyspace-events")["notify-keyspace-events"]
        assert set(events) == {"E", "x"}
    assert not server.is_running
    assert not server.dir.exists()


def test_redis_start_failure_reports_the_log_tail() -> None:
    server = RedisServer(extra_args=["--no-such-directive", "1"])
    try:
        with pytest.raises(RuntimeError, match="no-such-directive"):
            server.start()
        assert not server.is_running
    finally:
        server.close()


async def test_postgres_dsn_runs_queries(
    postgres_dsn: str, postgres_server: PostgresServer
) -> None:
    assert postgres_server.port not in SYSTEM_PORTS
    conn = await asyncpg.connect(postgres_dsn, timeout=2)
    try:
        assert await conn.fetchval("SELECT 1") == 1
        assert await conn.fetchval("SHOW fsync") == "off"
        await conn.execute("CREATE TABLE leftover (id int)")
    finally:
        await conn.close()


async def test_postgres_dsn_is_a_fresh_empty_database(
    postgres_dsn: str, postgres_server: PostgresServer
) -> None:
    conn = await asyncpg.connect(postgres_dsn, timeout=2)
    try:
        name = await conn.fetchval("SELECT current_database()")
        tables = await conn.fetchval(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
        )
    finally:
        await conn.close()
    assert name.startswith("test_")
    assert tables == 0
    assert postgres_dsn == postgres_server.dsn_for(name)


async def test_postgres_server_default_database(postgres_server: PostgresServer) -> None:
    assert postgres_server.dsn.endswith(f":{postgres_server.port}/sidecache_test")
    conn = await asyncpg.connect(postgres_server.dsn, timeout=2)
    try:
        assert await conn.fetchval("SELECT current_database()") == "sidecache_test"
    finally:
        await conn.close()


def test_postgres_drop_database_removes_it(postgres_server: PostgresServer) -> None:
    postgres_server.create_database("test_dropme")
    listed = "SELECT datname FROM pg_database WHERE datname = 'test_dropme'"
    assert postgres_server.psql(listed) == "test_dropme"
    postgres_server.drop_database("test_dropme")
    assert postgres_server.psql(listed) == ""
    with pytest.raises(ValueError):
        postgres_server.drop_database('x"; DROP DATABASE postgres; --')


async def test_private_postgres_keeps_data_across_stop_and_start(
    private_postgres: PostgresServer,
) -> None:
    port = private_postgres.port
    conn = await asyncpg.connect(private_postgres.dsn, timeout=2)
    await conn.execute("CREATE TABLE kept (v text); INSERT INTO kept VALUES ('before stop')")
    await conn.close()

    private_postgres.stop()
    assert not private_postgres.is_running
    with pytest.raises(OSError):
        await asyncpg.connect(private_postgres.dsn, timeout=2)

    private_postgres.start()
    assert private_postgres.is_running
    assert private_postgres.port == port
    conn = await asyncpg.connect(private_postgres.dsn, timeout=2)
    try:
        assert await conn.fetchval("SELECT v FROM kept") == "before stop"
    finally:
        await conn.close()


def test_private_postgres_restart_keeps_the_port(private_postgres: PostgresServer) -> None:
    port = private_postgres.port
    private_postgres.restart()
    assert private_postgres.port == port
    assert private_postgres.psql("SELECT 1", database="sidecache_test") == "1"
