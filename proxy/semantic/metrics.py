"""The semantic cache's Prometheus metrics (`sidecache_semantic_*`), registered when it is on."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# hit: served; miss: no candidate at the threshold; rejected: the guards turned every candidate
# away; stale: the chosen entry was gone, invalidated or reported wrong; skipped: no question
# (or the embedder could not embed it yet); off: the request opted out.
LOOKUP_RESULTS = ("hit", "miss", "rejected", "stale", "skipped", "off")


class SemanticMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.lookups = Counter(
            "sidecache_semantic_lookups_total",
            "Semantic lookups after an exact miss, by result.",
            ["result"],
            registry=registry,
        )
        self.rejections = Counter(
            "sidecache_semantic_rejections_total",
            "Candidates above the threshold that a guard turned away, by guard.",
            ["guard"],
            registry=registry,
        )
        self.similarity = Histogram(
            "sidecache_semantic_similarity",
            "Similarity of the candidates served as semantic hits.",
            buckets=(0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.925, 0.95, 0.975, 0.99, 1.0),
            registry=registry,
        )
        self.lookup_seconds = Histogram(
            "sidecache_semantic_lookup_seconds",
            "Time of a semantic lookup: embedding the question and searching its partition.",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=registry,
        )
        self.stored = Counter(
            "sidecache_semantic_stored_total",
            "Answers whose question was added to the semantic index.",
            registry=registry,
        )
        self.wrong = Counter(
            "sidecache_semantic_wrong_total",
            "Semantic hits reported wrong through the feedback endpoint.",
            registry=registry,
        )
        self.errors = Counter(
            "sidecache_semantic_store_errors_total",
            "Reads and appends of the shared vector log that failed.",
            ["op"],
            registry=registry,
        )
        self.vectors = Gauge(
            "sidecache_semantic_vectors",
            "Vectors held by this process's semantic index.",
            registry=registry,
        )
        for result in LOOKUP_RESULTS:
            self.lookups.labels(result)
