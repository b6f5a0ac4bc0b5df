"""Metrics read from the services' own state at scrape time: the circuit breakers', the
upstream gate's and the near cache's. The request path keeps nothing in step for them; each
collector is registered once, by `Metrics.watch_*`, on the runtime's registry.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from proxy.cache.near import NearCache
from proxy.upstream.breakers import BreakerBoard
from proxy.upstream.gate import UpstreamGate

_STATE_VALUE = {"closed": 0.0, "half-open": 1.0, "open": 2.0}


class BreakerCollector(Collector):
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


class GateCollector(Collector):
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


class NearCollector(Collector):
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
