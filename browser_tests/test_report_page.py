"""The report's HTML form in a real headless Chromium: it renders from a file (no network),
and each chart is drawn with one bar per value the report holds; served by the admin port, its
style sheet still applies under the page's Content-Security-Policy."""

from __future__ import annotations

from pathlib import Path

from playwright.sync_api import Page, expect

from admin.queries import QueryRunner
from admin.report.build import build_report
from admin.report.html import render_html
from admin.report.model import Report
from proxy.settings import BudgetSettings
from tests.admin_support import TOKEN, TOKENS
from tests.fixtures.sidecar import LoopThread, SidecarFactory
from tests.ledger_db import LedgerDb
from tests.test_report import NOW, synthetic, write


async def sqlite_report(path: str) -> Report:
    db = LedgerDb("sqlite", path)
    await write(db, synthetic(NOW))
    sink = db.sink()
    try:
        return await build_report(
            QueryRunner(sink), window="7d", now=NOW, overrides=[], budgets=BudgetSettings()
        )
    finally:
        await sink.close()


def test_the_html_report_draws_its_charts(
    page: Page, loop_thread: LoopThread, tmp_path: Path
) -> None:
    report = loop_thread.run(sqlite_report(str(tmp_path / "ledger.db")))
    assert report.by_model and report.by_tenant and report.persona
    html = tmp_path / "report.html"
    html.write_text(render_html(report), encoding="utf-8")
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(html.as_uri())
    expect(page.locator("h1")).to_contain_text("Sidecache report")
    expected = {
        "spend-by-model": 2 * len(report.by_model),
        "saved-by-tenant": len(report.by_tenant),
        "hit-rate-by-persona": len(report.persona),
    }
    expect(page.locator("svg.chart")).to_have_count(len(expected))
    for name, bars in expected.items():
        chart = page.locator(f'svg.chart[data-chart="{name}"]')
        expect(chart).to_be_visible()
        expect(chart.locator("rect.bar")).to_have_count(bars)
    # Bars are scaled to the largest: the largest figure's bar is the widest drawn.
    values = [v for g in report.by_model for v in (g.cost, g.prev_cost)]
    widths = page.locator('svg.chart[data-chart="spend-by-model"] rect.bar').evaluate_all(
        "bars => bars.map(b => b.getBBox().width)"
    )
    assert max(widths) > 0 and widths.index(max(widths)) == values.index(max(values))
    expect(page.locator("table").first).to_be_visible()
    assert errors == []


def test_the_admin_ports_html_report_renders_under_its_policy(
    page: Page, make_sidecar: SidecarFactory, loop_thread: LoopThread
) -> None:
    sidecar = make_sidecar(ADMIN_TOKENS=TOKENS)
    ledger = LedgerDb("sqlite", sidecar.runtime.settings.ledger.path)
    loop_thread.run(write(ledger, [r for r in synthetic(NOW) if r.created_at < NOW]))
    refused: list[str] = []
    page.on("console", lambda m: refused.append(m.text) if "Content Security" in m.text else None)
    page.set_extra_http_headers({"Authorization": f"Bearer {TOKEN}"})
    answer = page.goto(sidecar.admin_url + "/api/admin/report?window=30d&format=html")
    assert answer is not None and answer.status == 200
    expect(page.locator("h1")).to_contain_text("Sidecache report")
    expect(page.locator("svg.chart")).to_have_count(3)
    collapse = page.locator("table").first.evaluate("t => getComputedStyle(t).borderCollapse")
    assert collapse == "collapse"  # the inline style sheet applied
    assert refused == []
