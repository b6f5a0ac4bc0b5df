"""Prometheus metrics of the data plane, on a registry passed in (no global state).

Labels are low-cardinality by construction: endpoint names, cache statuses, status codes,
backends. Never user ids, tenants or anything a client chooses freely.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from proxy.cache.near import NearCache
from proxy.metrics_histogram import LeanHistogram
from proxy.metrics_state import BreakerCollector, GateCollector, NearCollector
from proxy.upstream.breakers import BreakerBoard
from proxy.upstream.gate import UpstreamGate

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
        # Labels: configured upstream names only (bounded by the config).
        self.upstream_retries = Counter(
            "sidecache_upstream_retries_total",
            "Upstream calls tried again on the same upstream (connection error, 502/503/504).",
            ["upstream"],
            registry=registry,
        )
        self.upstream_fallbacks = Counter(
            "sidecache_upstream_fallbacks_total",
            "Upstream calls moved to the next upstream of their model's fallback chain.",
            ["from", "to"],
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
        self.budget_downgrades = Counter(
            "sidecache_budget_downgrades_total",
            "Requests over budget sent with the cheaper model [budget.downgrade_to] names.",
            registry=registry,
        )
        self.rate_limited = Counter(
            "sidecache_rate_limited_total",
            "Requests refused with 429 rate_limit_exceeded, by the limit's scope and kind.",
            ["scope", "kind"],
            registry=registry,
        )
        self.rate_limit_unenforced = Counter(
            "sidecache_rate_limit_unenforced_total",
            "Rate-limit checks not made because the counter (Redis) could not answer: those "
            "requests were served unlimited.",
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
        self.invalidations = Counter(
            "sidecache_invalidations_total",
            "Invalidations made here (source: admin, or persona_change for a user's entries).",
            ["source"],
            registry=registry,
        )
        self.cache_stale = Counter(
            "sidecache_cache_stale_total",
            "Stored entries found invalidated when read (answered as misses).",
            ["endpoint"],
            registry=registry,
        )
        self.cache_entries = Gauge(
            "sidecache_cache_entries", "Entries in the memory cache.", registry=registry
        )
        self.cache_bytes = Gauge(
            "sidecache_cache_bytes", "Bytes held by the memory cache.", registry=registry
        )
        self.first_token_seconds = LeanHistogram(
            "sidecache_time_to_first_token_seconds",
            "Streamed answers: time from the request to its first event written to the client "
            "(a replayed stream is written at once: its whole time).",
            ("endpoint",),
            _LATENCY_BUCKETS,
        )
        self.overhead_seconds = LeanHistogram(
            "sidecache_overhead_seconds",
            "The sidecar's own time: a hit's whole time, a miss's time minus its upstream "
            "call's (requests whose upstream time is not known, coalesced or failed, are left "
            "out).",
            ("endpoint", "cache"),
            _LATENCY_BUCKETS,
        )
        registry.register(self.first_token_seconds)
        registry.register(self.overhead_seconds)
        self._request_children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}
        self._upstream_children: dict[tuple[str, int], Counter] = {}

    def watch_breakers(self, board: BreakerBoard) -> None:
        self.registry.register(BreakerCollector(board))

    def watch_gate(self, gate: UpstreamGate) -> None:
        self.registry.register(GateCollector(gate))

    def watch_near(self, near: NearCache) -> None:
        self.registry.register(NearCollector(near))

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

    def observe_answer(
        self,
        endpoint: str,
        cache: str,
        seconds: float,
        upstream_ms: float | None,
        first_event: float | None,
    ) -> None:
        """An understood request's overhead (known for hits and for misses that timed their
        upstream call) and, for a streamed answer (`first_event` is its delay, in seconds),
        its time to first token."""
        if upstream_ms is not None:
            self.overhead_seconds.observe((endpoint, cache), max(0.0, seconds - upstream_ms / 1000))
        elif cache == "HIT":
            self.overhead_seconds.observe((endpoint, cache), seconds)
        if first_event is not None:
            self.first_token_seconds.observe((endpoint,), first_event)

    def observe_retry(self, upstream: str) -> None:
        self.upstream_retries.labels(upstream).inc()

    def observe_fallback(self, source: str, target: str) -> None:
        self.upstream_fallbacks.labels(source, target).inc()

    def observe_upstream(self, endpoint: str, status: int, seconds: float) -> None:
        counter = self._upstream_children.get((endpoint, status))
        if counter is None:
            counter = self.upstream_requests.labels(endpoint, str(status))
            self._upstream_children[(endpoint, status)] = counter
        counter.inc()
        self.upstream_seconds.labels(endpoint).observe(seconds)
