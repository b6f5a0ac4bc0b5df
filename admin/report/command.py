"""`sidecache report`: the report on the ledger the settings name (DATABASE_URL, else the
SQLite LEDGER_PATH), written as Markdown to a file or stdout, with its steps on stderr when
that is a terminal."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from admin.queries import QueryRunner
from admin.report.build import build_report
from admin.report.html import render_html
from admin.report.markdown import render_markdown
from proxy.ledger.factory import make_sink
from proxy.settings import Settings

STEPS = 8  # build_report's progress calls


class ProgressBar:
    """`[###---] step` redrawn on one line of a terminal; silent when it is not one."""

    def __init__(self, stream: TextIO, total: int = STEPS) -> None:
        self._stream, self._total, self._done = stream, total, 0
        self._live = stream.isatty()

    def __call__(self, step: str) -> None:
        if self._live:
            bar = "#" * self._done + "-" * (self._total - self._done)
            self._stream.write(f"\r[{bar}] {step:<20}")
            self._stream.flush()
        self._done = min(self._total, self._done + 1)

    def close(self) -> None:
        if self._live:
            self._stream.write(f"\r[{'#' * self._total}] done{' ' * 20}\n")


async def report_text(
    settings: Settings, window: str, fmt: str = "md", *, now: datetime | None = None
) -> str:
    sink = make_sink(settings.ledger)
    bar = ProgressBar(sys.stderr)
    try:
        runner = QueryRunner(sink)
        report = await build_report(
            runner,
            window=window,
            now=now or datetime.now(UTC),
            overrides=await sink.fetch_overrides(),
            budgets=settings.budget,
            progress=bar,
        )
    finally:
        bar.close()
        await sink.close()
    return render_html(report) if fmt == "html" else render_markdown(report)


def write_report(text: str, out: str | None) -> None:
    if out:
        Path(out).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
