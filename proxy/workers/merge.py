"""One Prometheus exposition from every worker's: what `/metrics` answers with WORKERS > 1.

Each worker keeps its own registry (the scrape-time collectors read its own breakers, gate and
caches, which prometheus_client's multiprocess mode cannot do). The worker a scrape lands on
reads its siblings' expositions over the mesh and merges them here, series by series:

- counters, histograms and most gauges are summed (requests, in-flight calls, cache entries and
  bytes: the host's totals);
- a gauge that is a state, not an amount, keeps its worst value (`_WORST`): a breaker open in
  one worker shows open, a cache backend, ledger database or budget store down in one shows
  down;
- `*_created` timestamps keep the earliest.

Two series are added: `sidecache_workers` (how many workers the figures cover) and
`sidecache_worker_requests_total{worker}` (each worker's share of the proxy's requests; the
label is bounded by WORKERS), so a scrape shows that every worker is serving.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

Labels = tuple[tuple[str, str], ...]
Combine = Callable[[float, float], float]
# Gauges where the merged value is the worst worker's, not the sum.
_WORST: dict[str, Combine] = {
    "sidecache_breaker_state": max,  # 0 closed, 1 half-open, 2 open
    "sidecache_cache_backend_up": min,
    "sidecache_near_cache_on": min,
    "sidecache_ledger_db_up": min,
    "sidecache_budget_store_up": min,
}
_REQUESTS = "sidecache_requests_total"


def _combine(family: Metric, sample_name: str) -> Combine:
    if sample_name.endswith("_created"):
        return min
    if family.type == "gauge":
        return _WORST.get(family.name, _add)
    return _add


def _add(a: float, b: float) -> float:
    return a + b


def merge_expositions(texts: dict[int, str]) -> bytes:
    """The merged exposition (text format 0.0.4) of the workers' own, keyed by worker index."""
    families: dict[str, Metric] = {}
    values: dict[str, dict[tuple[str, Labels], float]] = {}
    per_worker: dict[int, float] = {}
    for index, text in sorted(texts.items()):
        per_worker[index] = 0.0
        for family in text_string_to_metric_families(text):
            merged = families.get(family.name)
            if merged is None:
                merged = families[family.name] = Metric(
                    family.name, family.documentation, family.type, family.unit
                )
                values[family.name] = {}
            series = values[family.name]
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                if sample.name == _REQUESTS:
                    per_worker[index] += sample.value
                held = series.get(key)
                series[key] = (
                    sample.value
                    if held is None
                    else _combine(family, sample.name)(held, sample.value)
                )
    for name, merged in families.items():
        for (sample_name, labels), value in values[name].items():
            merged.add_sample(sample_name, dict(labels), value)
    workers = Metric(
        "sidecache_workers", "Worker processes whose figures this scrape sums.", "gauge"
    )
    workers.add_sample("sidecache_workers", {}, float(len(texts)))
    shares = Metric(
        "sidecache_worker_requests",
        "Requests answered by the proxy port, by worker (label bounded by WORKERS).",
        "counter",
    )
    for index, count in per_worker.items():
        shares.add_sample("sidecache_worker_requests_total", {"worker": str(index)}, count)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fixed([*families.values(), workers, shares]))
    return generate_latest(registry)


class _Fixed(Collector):
    def __init__(self, metrics: Iterable[Metric]) -> None:
        self._metrics = list(metrics)

    def collect(self) -> Iterator[Metric]:
        return iter(self._metrics)
