"""The report as Markdown: one table per section, amounts in USD, changes signed."""

from __future__ import annotations

from admin.report.model import GroupSpend, Report


def _usd(amount: float) -> str:
    return f"${amount:,.4f}"


def _change(amount: float) -> str:
    return ("+" if amount >= 0 else "-") + _usd(abs(amount))


def _rate(hits: int, requests: int) -> str:
    return f"{100 * hits / requests:.1f} %" if requests else "-"


def _cell(text: str) -> str:
    """A table cell: a ledger value (a model name, a tenant) never breaks the table."""
    return text.replace("|", "\\|").replace("\n", " ")


def _table(head: str, align: str, rows: list[str], empty: str) -> list[str]:
    """A Markdown table (`head` and `align` rows, then `rows`), or the `empty` sentence."""
    return [head, align, *rows] if rows else [empty]


def _spend_table(title: str, groups: list[GroupSpend]) -> list[str]:
    rows = [
        f"| {_cell(g.key)} | {g.requests} | {_rate(g.hits, g.requests)} | {_usd(g.cost)} | "
        f"{_change(g.cost_change)} | {_usd(g.saved)} | {_change(g.saved_change)} |"
        for g in groups
    ]
    head = f"| {title} | requests | hit rate | spend | change | saved | change |"
    align = "|---|---:|---:|---:|---:|---:|---:|"
    table = _table(head, align, rows, "No requests in either window.")
    return [f"## Spend and savings by {title}", "", *table, ""]


def render_markdown(report: Report) -> str:
    lines = [
        f"# Sidecache report: {report.window} to {report.end}",
        "",
        f"Window {report.start} to {report.end} (UTC), compared with {report.prev_start} to "
        f"{report.start}; ledger: {report.dialect}.",
        "",
        f"- Spend: {_usd(report.total_cost)} "
        f"({_change(report.total_cost - report.prev_total_cost)})",
        f"- Saved by the cache: {_usd(report.total_saved)} "
        f"({_change(report.total_saved - report.prev_total_saved)})",
        "",
    ]
    lines += _spend_table("model", report.by_model)
    lines += _spend_table("tenant", report.by_tenant)
    lines += _spend_table("endpoint", report.by_endpoint)
    lines += ["## Hit rate by persona dimension", ""]
    lines += _table(
        "| dimension | value | requests | hit rate | saved |",
        "|---|---|---:|---:|---:|",
        [
            f"| {_cell(p.dimension)} | {_cell(p.value)} | {p.requests} | "
            f"{_rate(p.hits, p.requests)} | {_usd(p.saved)} |"
            for p in report.persona
        ],
        "No request in the window carried a persona.",
    )
    lines += ["", "## Persona dimensions that never changed the answer", ""]
    lines += _table(
        "| dimension | requests compared | answer changed | never changed | saving |",
        "|---|---:|---:|---|---:|",
        [
            f"| {_cell(d.dimension)} | {d.requests_compared} | {d.changed_answer} | "
            f"{'yes' if d.never_changed else 'no'} | {_usd(d.saving_usd)} |"
            for d in report.dimensions
        ],
        "No answers with digests in the window (ledger before migration 005?).",
    )
    drop = [d.dimension for d in report.dimensions if d.never_changed]
    if drop:
        lines += ["", f"Candidates to leave out of `X-Cache-Persona-Dims`: {', '.join(drop)}."]
    lines += ["", "## Repeated misses (candidates for warming)", ""]
    lines += _table(
        "| request digest | model | endpoint | misses | cost |",
        "|---|---|---|---:|---:|",
        [
            f"| {m.request_digest} | {_cell(m.model)} | {m.endpoint} | {m.misses} | "
            f"{_usd(m.cost)} |"
            for m in report.repeated_misses
        ],
        "No request was missed more than once.",
    )
    lines += ["", "## Budgets near their limits", ""]
    lines += _table(
        "| scope | subject | tenant | period | spent | limit | share |",
        "|---|---|---|---|---:|---:|---:|",
        [
            f"| {b.scope} | {_cell(b.subject)} | {_cell(b.tenant)} | {b.period} | "
            f"{_usd(b.spent_usd)} | {_usd(b.limit_usd)} | {100 * b.share:.0f} % |"
            for b in report.budgets_near
        ],
        "No budget is at 80 % of its limit or more.",
    )
    lines += ["", "## Slowest report queries", "", "| query | ms | rows |", "|---|---:|---:|"]
    lines += [f"| {q.name} | {q.ms:.1f} | {q.rows} |" for q in report.slowest]
    lines += ["", "## Index advice", ""]
    if report.advice:
        lines += [f"- {a.query} ({a.kind}): {a.reason}. `{a.sql}`" for a in report.advice]
    else:
        lines.append("The plans found nothing to add.")
    return "\n".join(lines) + "\n"
