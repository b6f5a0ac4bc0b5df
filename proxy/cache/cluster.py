"""Redis Cluster at start-up: whether REDIS_URL names one (`REDIS_CLUSTER=auto|on|off`), and
the clients for it — redis-py's RedisCluster for everything but the hit path's reads, which go
through ClusterPipe (proxy/cache/cluster_pipe.py)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Literal

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from proxy.cache.cluster_pipe import ClusterPipe
from proxy.cache.redis_link import RedisLink, RedisRefused

log = logging.getLogger("sidecache.cache")

ClusterMode = Literal["auto", "on", "off"]
# What every shared-state module talks to: one node or a cluster (the commands they use exist on
# both; keys touched together share a hash tag, docs/design.md §12).
RedisClient = Redis | RedisCluster

_ASK_TIMEOUT_S = 2.0


async def is_cluster(client: Redis, mode: ClusterMode) -> bool:
    """`on`/`off` as said; `auto` asks the node (`INFO cluster`). A node that cannot answer at
    start-up is taken for a single one, said in the log."""
    if mode != "auto":
        return mode == "on"
    try:
        async with asyncio.timeout(_ASK_TIMEOUT_S):
            info = await client.info("cluster")
    except (RedisError, OSError, TimeoutError):
        log.warning(
            "REDIS_CLUSTER=auto: Redis did not answer INFO at start-up, so it is taken for a "
            "single node; set REDIS_CLUSTER=on for a cluster"
        )
        return False
    return bool(info.get("cluster_enabled"))


def connect_cluster(link: RedisLink, timeout_ms: int, max_connections: int) -> RedisCluster:
    """Like connect_redis (proxy/cache/redis.py): no retries, short connects, callers bound each
    operation. `max_connections` is per node. TLS and the ACL user as the link says (redis-py's
    TLS options: it makes its connections per node itself)."""
    target, files = link.target, link.files
    (host, port) = target.hosts[0]
    tls: dict[str, Any] = {}
    if target.tls:
        tls = {
            "ssl": True,
            "ssl_ca_certs": files.ca_file,
            "ssl_certfile": files.cert_file,
            "ssl_keyfile": files.key_file,
            "ssl_cert_reqs": "required" if target.verify else "none",
            "ssl_check_hostname": target.verify and target.check_hostname,
        }
    return RedisCluster(
        host=host,
        port=port,
        username=target.username,
        password=target.password,
        max_connections=max_connections,
        socket_connect_timeout=timeout_ms / 1000,
        socket_timeout=None,
        retry=Retry(NoBackoff(), 0),
        require_full_coverage=False,  # a primary down costs its slots, not the others
        health_check_interval=0,
        **tls,
    )


async def open_cluster(
    single: Redis, link: RedisLink, timeout_ms: int, max_connections: int
) -> tuple[RedisCluster, ClusterPipe]:
    """Replaces the single-node client `single` (closed here) by the cluster clients: redis-py's
    for everything, and the hit path's pipe (one connection per primary, TLS as the link)."""
    if link.target.kind != "direct":
        raise RedisRefused("REDIS_CLUSTER: a cluster is named by one of its nodes' host:port")
    await single.aclose()
    client = connect_cluster(link, timeout_ms, max_connections)
    try:  # the slot map now, not inside the first request's bounded command
        async with asyncio.timeout(_ASK_TIMEOUT_S):
            await client.initialize()
    except (RedisError, OSError, TimeoutError) as exc:
        log.warning("Redis Cluster: no slot map at start-up (%s); read on first use", exc)
    pipe = ClusterPipe(link, timeout_ms / 1000)
    await pipe.start()
    return client, pipe
