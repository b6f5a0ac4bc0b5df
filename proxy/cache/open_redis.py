"""Opening Redis at start-up: the link (REDIS_URL and the TLS files, read once), the client
(one node or a cluster), and the store over it, with the near cache in front when asked; and
the same check alone for the supervisor of `--workers N`. The runtime builds on what this
returns; nothing here is kept at module level."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from proxy.cache.cluster import RedisClient, is_cluster, open_cluster
from proxy.cache.cluster_pipe import ClusterPipe
from proxy.cache.near import NearCache
from proxy.cache.near_store import NearStore
from proxy.cache.pipe import RedisPipe
from proxy.cache.redis import RedisStore, connect_redis
from proxy.cache.redis_link import RedisLink, RedisRefused
from proxy.cache.redis_url import TlsFiles
from proxy.cache.store import CacheStore
from proxy.cache.tracking import TrackingListener
from proxy.settings import NEAR_CACHE_MB_DEFAULT, CacheSettings
from proxy.vocabulary import INVALIDATION_GENERATION_KEY

log = logging.getLogger("sidecache")


@dataclass(frozen=True, slots=True)
class OpenedRedis:
    client: RedisClient  # redis-py's client: a cluster client on a Redis Cluster
    store: CacheStore  # the Redis store, or the near cache in front of it
    # The one node's pipe, which the rate check shares (one write with the hit's GET); None on
    # a cluster, where the rate keys share the tenant's slot, not the entry's.
    pipe: RedisPipe | None


async def open_redis(
    cache: CacheSettings,
    *,
    on_error: Callable[[str], None],
    watch_near: Callable[[NearCache], None],
) -> OpenedRedis:
    """`on_error`: told each failed store operation's name; `watch_near`: given the near cache
    when there is one (its metrics)."""
    link = _redis_link(cache)
    single = connect_redis(link, cache.redis_timeout_ms, cache.redis_max_connections)
    await link.verify(single)  # a wrong password or certificate stops start-up here
    timeout_ms = cache.redis_timeout_ms
    pipe: RedisPipe | ClusterPipe
    client: RedisClient = single
    clustered = await is_cluster(single, cache.redis_cluster)
    if clustered:
        client, pipe = await open_cluster(single, link, timeout_ms, cache.redis_max_connections)
    else:
        pipe = RedisPipe(link, timeout_ms / 1000)
    redis_store = RedisStore(
        client,
        on_error=on_error,
        timeout_ms=timeout_ms,
        pipe=pipe,
        generation_key=INVALIDATION_GENERATION_KEY,
    )
    store: CacheStore = redis_store
    if cache.near_cache_mb > 0:
        near_mb = cache.near_cache_mb
        store = _near_store(redis_store, link, near_mb, timeout_ms, watch_near, clustered=clustered)
    return OpenedRedis(client, store, pipe if isinstance(pipe, RedisPipe) else None)


def _near_store(
    store: RedisStore,
    link: RedisLink,
    megabytes: float,
    timeout_ms: int,
    watch_near: Callable[[NearCache], None],
    *,
    clustered: bool,
) -> CacheStore:
    if clustered:
        # Said louder when it was asked for than when it is only the default. Not on a cluster:
        # Redis reports changes per node (README: Redis Cluster).
        level = logging.INFO if megabytes == NEAR_CACHE_MB_DEFAULT else logging.WARNING
        log.log(level, "NEAR_CACHE_MB is ignored on a Redis Cluster")
        return store
    near = NearCache(int(megabytes * 1024 * 1024))
    watch_near(near)
    # Tracking sets up more than one command: a longer bound than a hit's.
    near_store = NearStore(store, near, TrackingListener(link, near, max(timeout_ms, 1000) / 1000))
    near_store.start()
    return near_store


async def check_redis(cache: CacheSettings) -> None:
    """The Redis start-up check alone, for the supervisor of `--workers N`: a refusal stops it
    once (RedisRefused) rather than every worker failing and being restarted forever."""
    if not cache.redis_url:
        return
    link = _redis_link(cache)
    client = connect_redis(link, cache.redis_timeout_ms, 1)
    try:
        await link.verify(client)
    finally:
        await client.aclose()


def _redis_link(cache: CacheSettings) -> RedisLink:
    """REDIS_URL and the TLS files, read once; the SSL context is built here, once. A TLS file
    that does not load stops start-up naming it."""
    assert cache.redis_url is not None
    files = TlsFiles(cache.redis_ca_file, cache.redis_cert_file, cache.redis_key_file)
    try:
        return RedisLink.from_url(cache.redis_url, files, cache.redis_timeout_ms / 1000)
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        raise RedisRefused(
            f"the TLS files for Redis do not load (REDIS_CA_FILE={files.ca_file!r}, "
            f"REDIS_CERT_FILE={files.cert_file!r}, REDIS_KEY_FILE={files.key_file!r}): {exc}"
        ) from None
