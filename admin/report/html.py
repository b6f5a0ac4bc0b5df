"""The report as one HTML page: its tables, and bar charts drawn as inline SVG (no script, no
CDN: the file opens anywhere, mailed or archived). Every chart is an `<svg class="chart">`
whose bars are `<rect class="bar">`, one per value shown."""

from __future__ import annotations

from html import escape

from admin.report.markdown import render_markdown
from admin.report.model import Report

_WIDTH, _ROW, _LABEL = 640, 22, 200
_STYLE = """body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;color:#222}
table{border-collapse:collapse;margin:.5rem 0 1.5rem}
td,th{border:1px solid #ccc;padding:.2rem .5rem}
td.n{text-align:right}.bar{fill:#3b7dd8}.bar.prev{fill:#b8c8e0}svg text{font-size:12px}"""


def bar_chart(name: str, title: str, bars: list[tuple[str, float, str]]) -> str:
    """Horizontal bars: (label, value, css class) each, scaled to the largest value."""
    top = max((value for _, value, _ in bars), default=0.0) or 1.0
    height = _ROW * len(bars) + 10
    parts = [f'<svg class="chart" data-chart="{name}" role="img" aria-label="{escape(title)}" '
             f'width="{_WIDTH}" height="{height}" xmlns="http://www.w3.org/2000/svg">']  # fmt: skip
    for i, (label, value, kind) in enumerate(bars):
        y = 5 + i * _ROW
        width = max(0.0, (_WIDTH - _LABEL - 90) * value / top)
        parts.append(
            f'<text x="0" y="{y + 14}">{escape(label[:30])}</text>'
            f'<rect class="bar {kind}" x="{_LABEL}" y="{y}" width="{width:.1f}" height="16">'
            f"<title>{escape(label)}: {value:.4f}</title></rect>"
            f'<text x="{_LABEL + width + 4:.1f}" y="{y + 14}">{value:.4f}</text>'
        )
    parts.append("</svg>")
    return f"<h3>{escape(title)}</h3>" + "".join(parts)


def charts(report: Report) -> list[str]:
    spend: list[tuple[str, float, str]] = []
    for g in report.by_model:
        spend += [(f"{g.key} (this)", g.cost, ""), (f"{g.key} (before)", g.prev_cost, "prev")]
    saved = [(g.key, g.saved, "") for g in report.by_tenant]
    hits = [(f"{p.dimension}={p.value}", p.hit_rate, "") for p in report.persona]
    return [
        bar_chart("spend-by-model", "Spend by model (USD): this window and the one before", spend),
        bar_chart("saved-by-tenant", "Saved by tenant (USD)", saved),
        bar_chart("hit-rate-by-persona", "Hit rate by persona value", hits),
    ]


def _markdown_tables(text: str) -> str:
    """The Markdown report's lines as HTML: headings, tables, paragraphs (its own small
    subset, so no Markdown library is needed)."""
    out: list[str] = []
    in_table = False
    for line in text.splitlines():
        if line.startswith("|"):
            cells = [c.strip().replace("\\|", "|") for c in line.strip("|").split(" | ")]
            if set(line) <= set("|-: "):
                continue
            tag = "th" if not in_table else "td"
            if not in_table:
                out.append("<table>")
                in_table = True
            row = "".join(
                f"<{tag}{' class=n' if tag == 'td' and c[:1] in '$+-0123456789' else ''}>"
                f"{escape(c)}</{tag}>"
                for c in cells
            )
            out.append(f"<tr>{row}</tr>")
            continue
        if in_table:
            out.append("</table>")
            in_table = False
        if line.startswith("## "):
            out.append(f"<h2>{escape(line[3:])}</h2>")
        elif line.startswith("# "):
            out.append(f"<h1>{escape(line[2:])}</h1>")
        elif line:
            out.append(f"<p>{escape(line.removeprefix('- '))}</p>")
    if in_table:
        out.append("</table>")
    return "\n".join(out)


def render_html(report: Report) -> str:
    body = _markdown_tables(render_markdown(report))
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>Sidecache report {escape(report.end)}</title><style>{_STYLE}</style></head>"
        f"<body>{body}<h2>Charts</h2>{''.join(charts(report))}</body></html>\n"
    )
