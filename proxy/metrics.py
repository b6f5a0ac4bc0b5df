"""Prometheus metrics of the data plane, on a registry passed in (no global state).

Labels are low-cardinality by construction: endpoint names, cache statuses, status codes,
backends. Never user ids, tenants or anything a client chooses freely.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator
from itertools import accumulate

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from proxy.cache.near import NearCache
from proxy.upstream.breakers import BreakerBoard
from proxy.upstream.gate import UpstreamGate

_STATE_VALUE = {"closed": 0.0, "half-open": 1.0, "open": 2.0}

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
        self.first_token_seconds = _LeanHistogram(
            "sidecache_time_to_first_token_seconds",
            "Streamed answers: time from the request to its first event written to the client "
            "(a replayed stream is written at once: its whole time).",
            ("endpoint",),
        )
        self.overhead_seconds = _LeanHistogram(
            "sidecache_overhead_seconds",
            "The sidecar's own time: a hit's whole time, a miss's time minus its upstream "
            "call's (requests whose upstream time is not known, coalesced or failed, are left "
            "out).",
            ("endpoint", "cache"),
        )
        registry.register(self.first_token_seconds)
        registry.register(self.overhead_seconds)
        self._request_children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}
        self._upstream_children: dict[tuple[str, int], Counter] = {}

    def watch_breakers(self, board: BreakerBoard) -> None:
        self.registry.register(_BreakerCollector(board))

    def watch_gate(self, gate: UpstreamGate) -> None:
        self.registry.register(_GateCollector(gate))

    def watch_near(self, near: NearCache) -> None:
        self.registry.register(_NearCollector(near))

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


class _LeanHistogram(Collector):
    """A histogram kept as plain counts per label values and exported at scrape time: an
    observation is a bisect and two additions, a fraction of prometheus_client's
    Histogram.observe (a lock and a bucket walk), for the histograms observed on every hit."""

    def __init__(self, name: str, documentation: str, labels: tuple[str, ...]) -> None:
        self._name = name
        self._documentation = documentation
        self._labels = labels
        self._bounds = tuple(float(b) for b in _LATENCY_BUCKETS)
        # per label values: a count per bucket (the last one +Inf), then the sum
        self._series: dict[tuple[str, ...], list[float]] = {}

    def observe(self, key: tuple[str, ...], value: float) -> None:
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = [0.0] * (len(self._bounds) + 2)
        series[bisect_left(self._bounds, value)] += 1  # le is inclusive
        series[-1] += value

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self._name, self._documentation, labels=self._labels)
        bounds = [*map(floatToGoString, self._bounds), "+Inf"]
        for key, series in sorted(self._series.items()):
            cumulative = list(accumulate(series[:-1]))
            family.add_metric(list(key), list(zip(bounds, cumulative, strict=True)), series[-1])
        yield family


class _BreakerCollector(Collector):
    """Breaker state read at scrape time: nothing to keep in step on the request path."""

    def __init__(self, board: BreakerBoard) -> None:
        self._board = board

    def collect(self) -> Iterator[Metric]:
        state = GaugeMetricFamily(
            "sidecache_breaker_state",
            "Circuit breaker state: 0 closed, 1 half-open, 2 open.",
            labels=["breaker"],
        )
        failures = GaugeMetricFamily(
            "sidecache_breaker_failures",
            "Consecutive failures counted by the breaker.",
            labels=["breaker"],
        )
        opened = CounterMetricFamily(
            "sidecache_breaker_opened", "Times the breaker opened.", labels=["breaker"]
        )
        for name, breaker in self._board.breakers.items():
            state.add_metric([name], _STATE_VALUE.get(breaker.state, 2.0))
            failures.add_metric([name], float(breaker.failures))
            opened.add_metric([name], float(self._board.opened_count.get(name, 0)))
        transitions = CounterMetricFamily(
            "sidecache_breaker_transitions", "Breaker state changes, all breakers together."
        )
        transitions.add_metric([], float(self._board.transitions))
        yield from (state, failures, opened, transitions)


class _GateCollector(Collector):
    """The upstream gate's load, read at scrape time."""

    def __init__(self, gate: UpstreamGate) -> None:
        self._gate = gate

    def collect(self) -> Iterator[Metric]:
        queued = GaugeMetricFamily(
            "sidecache_upstream_queued", "Upstream calls waiting for a slot at the gate."
        )
        queued.add_metric([], float(self._gate.queued))
        active = GaugeMetricFamily(
            "sidecache_upstream_in_flight",
            "Upstream calls holding a slot (at most UPSTREAM_MAX_IN_FLIGHT).",
        )
        active.add_metric([], float(self._gate.active))
        yield from (queued, active)


class _NearCollector(Collector):
    """The near cache's counts, read at scrape time: a near hit only adds to a plain int."""

    def __init__(self, near: NearCache) -> None:
        self._near = near

    def collect(self) -> Iterator[Metric]:
        near = self._near
        lookups = CounterMetricFamily(
            "sidecache_near_cache_lookups",
            "Near cache lookups (made while it is on), by result.",
            labels=["result"],
        )
        lookups.add_metric(["hit"], float(near.hits))
        lookups.add_metric(["miss"], float(near.misses))
        evictions = CounterMetricFamily(
            "sidecache_near_cache_evictions", "Near cache entries evicted to stay in its bound."
        )
        evictions.add_metric([], float(near.evictions))
        entries = GaugeMetricFamily("sidecache_near_cache_entries", "Entries in the near cache.")
        entries.add_metric([], float(len(near)))
        held = GaugeMetricFamily("sidecache_near_cache_bytes", "Bytes held by the near cache.")
        held.add_metric([], float(near.held_bytes))
        on = GaugeMetricFamily(
            "sidecache_near_cache_on",
            "1 while the near cache serves (Redis tracking confirmed), 0 while it is bypassed.",
        )
        on.add_metric([], float(near.enabled))
        yield from (lookups, evictions, entries, held, on)
