"""`GET /api/admin/report?window=7d&format=json|md|html`: the report on the admin port (its
token), as JSON (the default) or as the Markdown and HTML `sidecache report` writes."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

import msgspec
from aiohttp import web

from admin.queries import QueryRunner
from admin.report.build import build_report
from admin.report.html import render_html
from admin.report.markdown import render_markdown
from admin.wire import json_answer, params
from proxy.runtime import Runtime

REPORT_PATH = "/api/admin/report"
MARKDOWN, HTML = "text/markdown", "text/html"
# The HTML form is tables, a style sheet and inline SVG: nothing else may load or run in it.
_HTML_POLICY = "default-src 'none'; style-src 'unsafe-inline'"


class ReportParams(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    window: Literal["24h", "7d", "30d"] = "7d"
    format: Literal["json", "md", "html"] = "json"


class ReportApi:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    async def report(self, request: web.Request) -> web.Response:
        p = params(request, ReportParams)
        runner = QueryRunner(self.runtime.ledger.sink)  # its own: the timings are this report's
        report = await build_report(
            runner,
            window=p.window,
            now=datetime.now(UTC),
            overrides=self.runtime.budgets.overrides,
            budgets=self.runtime.settings.budget,
        )
        if p.format == "md":
            return web.Response(text=render_markdown(report), content_type=MARKDOWN)
        if p.format == "html":
            page = web.Response(text=render_html(report), content_type=HTML)
            page.headers["Content-Security-Policy"] = _HTML_POLICY
            return page
        return json_answer(report)
