"""Result rows, their targets, the printed table and the JSON file."""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import msgspec

from .procs import HarnessError


class Check(msgspec.Struct, frozen=True):
    """One target: `value` must be <= `limit` (or >= it when `at_least`)."""

    name: str
    value: float
    limit: float
    unit: str
    at_least: bool = False

    @property
    def passed(self) -> bool:
        return self.value >= self.limit if self.at_least else self.value <= self.limit

    def target_text(self) -> str:
        sign = ">=" if self.at_least else "<="
        return f"{self.name} {sign} {_number(self.limit)} {self.unit}".strip()

    def shortfall_text(self) -> str:
        """How far the value is from the target, e.g. `p50 +0.10 ms` or `-1,250 req/s (-14%)`."""
        gap = self.value - self.limit
        pct = f" ({gap / self.limit:+.0%})" if self.limit else ""
        return f"{self.name} {_signed(gap)} {self.unit}{pct}".replace("  ", " ").strip()


class Row(msgspec.Struct, frozen=True):
    """One line of the table; `data` holds the raw numbers for the JSON file."""

    label: str
    value: str
    checks: tuple[Check, ...] = ()
    error: str | None = None
    data: dict[str, Any] = msgspec.field(default_factory=dict)

    @property
    def target(self) -> str:
        return ", ".join(check.target_text() for check in self.checks) or "-"

    @property
    def verdict(self) -> str:
        if self.error is not None:
            return "ERROR"
        if not self.checks:
            return "-"
        missed = [check.shortfall_text() for check in self.checks if not check.passed]
        return "MISS " + ", ".join(missed) if missed else "PASS"


def _number(value: float) -> str:
    if value >= 1000:
        return f"{value:,.0f}"
    return f"{value:g}"


def _signed(value: float) -> str:
    if abs(value) >= 100:
        return f"{value:+,.0f}"
    return f"{value:+.2f}"


def ms(value: float) -> str:
    return f"{value:.2f}"


HEADER = ("measurement", "value", "target", "verdict")


def format_table(rows: list[Row], notes: list[str]) -> str:
    lines = [HEADER] + [
        (row.label, row.value if row.error is None else row.error, row.target, row.verdict)
        for row in rows
    ]
    widths = [max(len(line[i]) for line in lines) for i in range(len(HEADER) - 1)]
    out = []
    for n, line in enumerate(lines):
        cells = [cell.ljust(width) for cell, width in zip(line, widths, strict=False)]
        out.append("  ".join([*cells, line[-1]]).rstrip())
        if n == 0:
            out.append("  ".join("-" * width for width in [*widths, len(HEADER[-1])]))
    return "\n".join(out + [f"  {note}" for note in notes])


def rows_json(rows: list[Row]) -> list[dict[str, Any]]:
    out = []
    for row in rows:
        item = msgspec.to_builtins(row)
        item["target"] = row.target
        item["verdict"] = row.verdict
        item["checks"] = [
            {**msgspec.to_builtins(check), "passed": check.passed} for check in row.checks
        ]
        out.append(item)
    return out


def write_json(path: Path, document: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(msgspec.json.format(msgspec.json.encode(document), indent=2) + b"\n")


def run_standalone(
    prog: str,
    doc: str | None,
    measure: Callable[[ExitStack, float], list[Row]],
    note: str = "",
    argv: Sequence[str] | None = None,
) -> int:
    """`python -m bench.<module> [--quick]` for a measurement that starts its own servers:
    the full size, or a fifth of it, printed as one table."""
    parser = argparse.ArgumentParser(prog=prog, description=doc)
    parser.add_argument("--quick", action="store_true", help="a fifth of the work")
    args = parser.parse_args(argv)
    with ExitStack() as stack:
        try:
            rows = measure(stack, 0.2 if args.quick else 1.0)
        except HarnessError as err:
            print(f"bench: {err}", file=sys.stderr)
            return 1
    print(format_table(rows, [note] if note else []))
    return 0


def in_temp_dir(
    prefix: str, measure: Callable[[Path, float], list[Row]]
) -> Callable[[ExitStack, float], list[Row]]:
    """`measure(workdir, scale)` as run_standalone wants it: in a temporary dir of its own."""

    def run(stack: ExitStack, scale: float) -> list[Row]:
        workdir = stack.enter_context(tempfile.TemporaryDirectory(prefix=prefix))
        return measure(Path(workdir), scale)

    return run
