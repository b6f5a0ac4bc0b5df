"""`GET /api/admin/report?window=7d`: the report as JSON, on the admin port (its token)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

import msgspec
from aiohttp import web

from admin.queries import QueryRunner
from admin.report.build import build_report
from admin.wire import json_answer, params
from proxy.runtime import Runtime

REPORT_PATH = "/api/admin/report"


class ReportParams(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    window: Literal["24h", "7d", "30d"] = "7d"


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
        return json_answer(report)
