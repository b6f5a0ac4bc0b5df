"""Parsers for the load generators' output: hey's text summary and hit.lua's JSON line for wrk."""

from __future__ import annotations

import re

import msgspec


class ParseError(ValueError):
    """The tool's output does not have the shape the parser knows."""


class HeyResult(msgspec.Struct, frozen=True):
    """hey's summary. hey prints latencies in seconds with four decimals (0.1 ms steps)."""

    total_s: float
    requests_per_s: float
    latency_s: dict[int, float]  # percentile (10, 25, 50, 75, 90, 95, 99) -> seconds
    statuses: dict[int, int]  # HTTP status -> responses
    errors: int  # requests that got no HTTP answer (refused, reset, timed out)

    @property
    def responses(self) -> int:
        return sum(self.statuses.values())

    @property
    def p50_ms(self) -> float:
        return self.latency_s[50] * 1000

    @property
    def p99_ms(self) -> float:
        return self.latency_s[99] * 1000


_HEY_TOTAL = re.compile(r"^\s*Total:\s+([0-9.]+) secs", re.MULTILINE)
_HEY_RPS = re.compile(r"^\s*Requests/sec:\s+([0-9.]+)", re.MULTILINE)
_HEY_PERCENTILE = re.compile(r"^\s*(\d+)% in ([0-9.]+) secs\s*$")
_HEY_STATUS = re.compile(r"^\s*\[(\d{3})\]\s+(\d+) responses\s*$")
_HEY_ERROR = re.compile(r"^\s*\[(\d+)\]\s+\S")


def _sections(text: str) -> dict[str, list[str]]:
    """hey's output split at its unindented `Title:` lines (indented lines belong to them)."""
    sections: dict[str, list[str]] = {}
    current: list[str] = []
    for line in text.splitlines():
        if line and not line[0].isspace() and line.rstrip().endswith(":"):
            current = sections.setdefault(line.strip().rstrip(":"), [])
        elif line.strip():
            current.append(line)
    return sections


def _number(pattern: re.Pattern[str], text: str, what: str) -> float:
    match = pattern.search(text)
    if match is None:
        raise ParseError(f"hey output has no {what} line")
    return float(match.group(1))


def parse_hey(text: str) -> HeyResult:
    sections = _sections(text)
    latency: dict[int, float] = {}
    for line in sections.get("Latency distribution", []):
        match = _HEY_PERCENTILE.match(line)
        if match is not None:
            latency[int(match.group(1))] = float(match.group(2))
    statuses: dict[int, int] = {}
    for line in sections.get("Status code distribution", []):
        match = _HEY_STATUS.match(line)
        if match is not None:
            statuses[int(match.group(1))] = int(match.group(2))
    errors = 0
    for line in sections.get("Error distribution", []):
        match = _HEY_ERROR.match(line)
        if match is not None:
            errors += int(match.group(1))
    if statuses and not {50, 99} <= latency.keys():
        raise ParseError("hey output has answers but no 50%/99% latency lines")
    if not statuses and not errors:
        raise ParseError("hey output has neither status codes nor errors")
    return HeyResult(
        total_s=_number(_HEY_TOTAL, text, "Total"),
        requests_per_s=_number(_HEY_RPS, text, "Requests/sec"),
        latency_s=latency,
        statuses=statuses,
        errors=errors,
    )


class WrkErrors(msgspec.Struct, frozen=True):
    connect: int
    read: int
    write: int
    status: int  # answers with a status >= 400
    timeout: int

    @property
    def total(self) -> int:
        return self.connect + self.read + self.write + self.status + self.timeout


class WrkLatency(msgspec.Struct, frozen=True):
    """Microseconds, as wrk records them."""

    min: int
    mean: float
    max: int
    p50: int
    p90: int
    p99: int
    p999: int


class WrkResult(msgspec.Struct, frozen=True):
    """The `BENCH_JSON {...}` line that bench/hit.lua's done() prints."""

    requests: int
    duration_us: int
    bytes: int
    errors: WrkErrors
    latency_us: WrkLatency

    @property
    def requests_per_s(self) -> float:
        return self.requests / (self.duration_us / 1e6)


WRK_MARKER = "BENCH_JSON "


def parse_wrk(text: str) -> WrkResult:
    for line in text.splitlines():
        if line.startswith(WRK_MARKER):
            try:
                return msgspec.json.decode(line[len(WRK_MARKER) :], type=WrkResult)
            except (msgspec.DecodeError, msgspec.ValidationError) as err:
                raise ParseError(f"wrk's {WRK_MARKER.strip()} line is malformed: {err}") from err
    raise ParseError(f"wrk output has no {WRK_MARKER.strip()} line (did hit.lua's done() run?)")
