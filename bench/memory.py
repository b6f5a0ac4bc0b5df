"""The sidecar's memory, read from /proc (VmHWM is the peak resident set since start), with its
child processes' (the SQLite ledger's writer process) added."""

from __future__ import annotations

from pathlib import Path

from .procs import HarnessError
from .report import Row
from .stack import Bench


def status_kb(pid: int, field: str) -> int:
    """A `kB` field of /proc/PID/status, e.g. VmHWM or VmRSS."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name == field:
            return int(rest.split()[0])
    raise HarnessError(f"/proc/{pid}/status has no {field} line")


def children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(child) for child in (task / "children").read_text().split()]
    return found


def peak_rss(bench: Bench) -> list[Row]:
    try:
        pids = [bench.sidecar_pid, *children(bench.sidecar_pid)]
        peak = sum(status_kb(pid, "VmHWM") for pid in pids)
        now = sum(status_kb(pid, "VmRSS") for pid in pids)
    except FileNotFoundError as err:
        raise HarnessError(f"the sidecar (pid {bench.sidecar_pid}) is gone") from err
    return [
        Row(
            f"sidecar peak RSS ({len(pids)} processes)",
            f"{peak / 1024:.1f} MB (now {now / 1024:.1f} MB)",
            data={"vm_hwm_kb": peak, "vm_rss_kb": now, "processes": len(pids)},
        )
    ]
