"""A Prometheus histogram cheap enough to observe on every hit (see `LeanHistogram`)."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator
from itertools import accumulate

from prometheus_client.core import HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString


class LeanHistogram(Collector):
    """A histogram kept as plain counts per label values and exported at scrape time: an
    observation is a bisect and two additions, a fraction of prometheus_client's
    Histogram.observe (a lock and a bucket walk), for the histograms observed on every hit."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labels: tuple[str, ...],
        buckets: tuple[float, ...],
    ) -> None:
        self._name = name
        self._documentation = documentation
        self._labels = labels
        self._bounds = tuple(float(b) for b in buckets)
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
