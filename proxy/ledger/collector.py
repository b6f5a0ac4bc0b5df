"""Prometheus view of the ledger, the price table and the budgets.

A collector that reads the services' own counters at scrape time, so the services stay free of
metric objects and nothing is counted twice. Labels are fixed sets only: no tenant or user,
and a model label only for the price table's models (model names are client-chosen). Register
once per registry with `register_ledger_metrics(registry, writer=..., prices=..., budgets=...)`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from proxy.budget.metrics import budget_store_metrics
from proxy.ledger.stats import OTHER_MODEL

if TYPE_CHECKING:
    from proxy.budget.book import BudgetBook
    from proxy.ledger.pricing import PriceTable
    from proxy.ledger.writer import LedgerWriter

_OUTCOMES = ("written", "duplicates", "journaled", "replayed", "dropped", "rejected")


class LedgerCollector(Collector):
    def __init__(
        self,
        writer: LedgerWriter | None = None,
        prices: PriceTable | None = None,
        budgets: BudgetBook | None = None,
    ) -> None:
        self.writer = writer
        self.prices = prices
        self.budgets = budgets

    def collect(self) -> Iterator[Metric]:
        if self.writer is not None:
            yield from self._ledger(self.writer)
        if self.prices is not None:
            unpriced = CounterMetricFamily(
                "sidecache_unpriced_requests",
                "Requests for models missing from the price table (costed at 0); the model "
                "names are on the admin overview.",
            )
            unpriced.add_metric([], self.prices.unpriced_requests)
            yield unpriced
        if self.budgets is not None:
            yield from self._budgets(self.budgets)

    def _ledger(self, writer: LedgerWriter) -> Iterator[Metric]:
        tokens = CounterMetricFamily(
            "sidecache_tokens",
            "Tokens of the recorded requests by endpoint and kind (input and output count "
            "every prompt and completion token; cached_input and cache_write are parts of "
            "input, reasoning of output), paid for upstream or avoided (HIT, COALESCED).",
            labels=["endpoint", "kind", "billing"],
        )
        for endpoint, kind, billing, count in writer.tokens.samples():
            tokens.add_metric([endpoint, kind, billing], count)
        yield tokens
        yield from self._usd(writer)
        stats = writer.stats
        records = CounterMetricFamily(
            "sidecache_ledger_records",
            "Ledger records by what became of them (written: new rows in the database; "
            "dropped: the in-memory queue was full; rejected: refused by the database as bad "
            "data and kept in the rejects file).",
            labels=["outcome"],
        )
        for outcome in _OUTCOMES:
            records.add_metric([outcome], getattr(stats, outcome))
        yield records
        failures = CounterMetricFamily(
            "sidecache_ledger_db_failures", "Failed attempts to write to the ledger database."
        )
        failures.add_metric([], stats.failures)
        yield failures
        for name, doc, value in (
            ("sidecache_ledger_queue_depth", "Records waiting in memory.", stats.queued),
            (
                "sidecache_ledger_journal_pending",
                "Records in the journal waiting for the database.",
                stats.journal_pending,
            ),
            (
                "sidecache_ledger_db_up",
                "1 while the ledger database takes writes, 0 while records are journaled.",
                int(stats.sink_up),
            ),
        ):
            gauge = GaugeMetricFamily(name, doc)
            gauge.add_metric([], value)
            yield gauge

    def _usd(self, writer: LedgerWriter) -> Iterator[Metric]:
        """Spent and saved USD by endpoint and model, named as the price table prices it (a
        dated name as its model); an unpriced model is "other", so the label takes only the
        table's names."""
        prices = self.prices
        folded: dict[tuple[str, str], list[float]] = {}
        for endpoint, model, cost, saved in writer.costs.samples():
            label = (prices.priced_name(model) if prices is not None else None) or OTHER_MODEL
            usd = folded.setdefault((endpoint, label), [0.0, 0.0])
            usd[0] += cost
            usd[1] += saved
        spent = CounterMetricFamily(
            "sidecache_cost_usd",
            "USD spent on the recorded requests' own upstream calls, by endpoint and model "
            '(models missing from the price table: "other").',
            labels=["endpoint", "model"],
        )
        avoided = CounterMetricFamily(
            "sidecache_saved_usd",
            "USD saved by answering without an upstream call of the request's own (HIT, "
            'COALESCED), by endpoint and model (unpriced models: "other").',
            labels=["endpoint", "model"],
        )
        for (endpoint, label), (cost, saved) in sorted(folded.items()):
            spent.add_metric([endpoint, label], cost)
            avoided.add_metric([endpoint, label], saved)
        yield from (spent, avoided)

    def _budgets(self, budgets: BudgetBook) -> Iterator[Metric]:
        alerts = CounterMetricFamily(
            "sidecache_budget_alerts",
            "Budget alerts fired, by budget scope and threshold (percent of the limit).",
            labels=["scope", "threshold"],
        )
        for (scope, threshold), count in sorted(budgets.alerter.counts.items()):
            alerts.add_metric([scope, threshold], count)
        yield alerts
        yield from budget_store_metrics(budgets)


def register_ledger_metrics(
    registry: CollectorRegistry,
    *,
    writer: LedgerWriter | None = None,
    prices: PriceTable | None = None,
    budgets: BudgetBook | None = None,
) -> LedgerCollector:
    collector = LedgerCollector(writer, prices, budgets)
    registry.register(collector)
    return collector
