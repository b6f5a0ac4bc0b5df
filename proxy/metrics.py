"""Prometheus metrics of the data plane, on a registry passed in (no global state).

Labels are low-cardinality by construction: endpoint names, cache statuses, status codes,
backends. Never user ids, tenants or anything a client chooses freely.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
)


class Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.requests = Counter(
            "sidecache_requests_total",
            "Requests answered by the proxy port.",
            ["endpoint", "cache", "status"],
            registry=registry,
        )
        self.request_seconds = Histogram(
            "sidecache_request_duration_seconds",
            "Time from request to the end of the answer, by endpoint and cache status.",
            ["endpoint", "cache"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.upstream_requests = Counter(
            "sidecache_upstream_requests_total",
            "Calls made to the upstream API, by endpoint and answer status.",
            ["endpoint", "status"],
            registry=registry,
        )
        self.upstream_seconds = Histogram(
            "sidecache_upstream_duration_seconds",
            "Time until the upstream's answer headers arrived.",
            ["endpoint"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.cache_errors = Counter(
            "sidecache_cache_errors_total",
            "Cache backend operations that failed (served as misses / not stored).",
            ["op"],
            registry=registry,
        )
        self.cache_up = Gauge(
            "sidecache_cache_backend_up",
            "1 while the cache backend answers, 0 while the proxy runs as a pass-through.",
            ["backend"],
            registry=registry,
        )
        self.embedding_items = Counter(
            "sidecache_embedding_items_total",
            "Embedding inputs served, by whether they came from the cache.",
            ["cache"],
            registry=registry,
        )
        self.cache_entries = Gauge(
            "sidecache_cache_entries", "Entries in the memory cache.", registry=registry
        )
        self.cache_bytes = Gauge(
            "sidecache_cache_bytes", "Bytes held by the memory cache.", registry=registry
        )
        self._request_children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}
        self._upstream_children: dict[tuple[str, int], Counter] = {}

    def observe_request(self, endpoint: str, cache: str, status: int, seconds: float) -> None:
        children = self._request_children.get((endpoint, cache, status))
        if children is None:
            children = (
                self.requests.labels(endpoint, cache, str(status)),
                self.request_seconds.labels(endpoint, cache),
            )
            self._request_children[(endpoint, cache, status)] = children
        children[0].inc()
        children[1].observe(seconds)

    def observe_upstream(self, endpoint: str, status: int, seconds: float) -> None:
        counter = self._upstream_children.get((endpoint, status))
        if counter is None:
            counter = self.upstream_requests.labels(endpoint, str(status))
            self._upstream_children[(endpoint, status)] = counter
        counter.inc()
        self.upstream_seconds.labels(endpoint).observe(seconds)
