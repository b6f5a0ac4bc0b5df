"""The budget book's health as metrics (issue #19, item 5): whether the spend store answers,
what was decided while it did not, the settles waiting to be retried, and the totals restored
from the ledger. Read at scrape time from the book's counters: nothing on the request path."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

if TYPE_CHECKING:
    from proxy.budget.book import BudgetBook


def budget_store_metrics(budgets: BudgetBook) -> Iterator[Metric]:
    up = GaugeMetricFamily(
        "sidecache_budget_store_up",
        "1 when the budget spend store answered its last command, 0 when it failed.",
        labels=["backend", "on_store_down"],
    )
    up.add_metric([budgets.store.backend, budgets.settings.on_store_down], budgets.store_up)
    yield up
    unchecked = CounterMetricFamily(
        "sidecache_budget_unchecked",
        "Requests whose budgets could not be checked (store down), by what BUDGET_ON_STORE_DOWN "
        "decided: allowed (open) or refused with 503 (closed).",
        labels=["decision"],
    )
    for decision in ("allowed", "refused"):
        unchecked.add_metric([decision], budgets.unchecked[decision])
    yield unchecked
    backlog = GaugeMetricFamily(
        "sidecache_budget_settles_pending",
        "Settles the spend store has not taken yet, being retried.",
    )
    backlog.add_metric([], budgets.backlog.pending)
    yield backlog
    for name, doc, value in (
        (
            "sidecache_budget_store_errors",
            "Budget spend-store failures (what was decided: sidecache_budget_unchecked_total).",
            budgets.store_errors,
        ),
        (
            "sidecache_budget_webhook_failures",
            "Alert webhook POSTs that failed.",
            budgets.alerter.webhook_failures,
        ),
        (
            "sidecache_budget_settles_dropped",
            "Settles dropped because the retry backlog was full (spend not counted).",
            budgets.backlog.dropped,
        ),
        (
            "sidecache_budget_restored",
            "Budget totals restored from the ledger (store restarted empty, or a new process).",
            budgets.restore.restored,
        ),
    ):
        counter = CounterMetricFamily(name, doc)
        counter.add_metric([], value)
        yield counter
