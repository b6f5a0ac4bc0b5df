"""The semantic cache a sidecar's settings ask for, put together (proxy/runtime.py calls it)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from proxy.cache.cluster import RedisClient
from proxy.cache.store import CacheStore
from proxy.keys import KeyMaker
from proxy.semantic.cache import SemanticCache
from proxy.semantic.embedder import Embedder, LocalEmbedder, UpstreamEmbedder
from proxy.semantic.metrics import SemanticMetrics
from proxy.semantic.vector_log import LocalVectorLog, RedisVectorLog, VectorLog
from proxy.settings import Settings, SettingsError


async def open_semantic(
    settings: Settings,
    store: CacheStore,
    redis: RedisClient | None,
    keys: KeyMaker,
    registry: CollectorRegistry,
    proxy_url: str | None,
) -> SemanticCache | None:
    semantic = settings.semantic
    if not semantic.enabled:
        return None
    embedder: Embedder
    if semantic.embedder == "local":
        embedder = LocalEmbedder()
    else:
        if proxy_url is None:
            raise SettingsError("SEMANTIC_EMBEDDER=upstream:<model> needs the proxy port's URL")
        embedder = UpstreamEmbedder(semantic.embedder.removeprefix("upstream:"), proxy_url)
    metrics = SemanticMetrics(registry)
    log: VectorLog = LocalVectorLog()
    if redis is not None:
        errors = metrics.errors
        log = RedisVectorLog(
            redis,
            semantic.max_per_partition,
            settings.cache.redis_timeout_ms,
            on_error=lambda op: errors.labels(op).inc(),
        )
    cache = SemanticCache(
        semantic, embedder, log, store, keys, metrics, wrong_ttl_s=settings.ttl.max
    )
    await cache.start()
    return cache
