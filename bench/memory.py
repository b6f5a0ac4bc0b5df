"""The sidecar's memory, read from /proc (VmHWM is the peak resident set since start)."""

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


def peak_rss(bench: Bench) -> list[Row]:
    try:
        peak = status_kb(bench.sidecar_pid, "VmHWM")
        now = status_kb(bench.sidecar_pid, "VmRSS")
    except FileNotFoundError as err:
        raise HarnessError(f"the sidecar (pid {bench.sidecar_pid}) is gone") from err
    return [
        Row(
            "sidecar peak RSS",
            f"{peak / 1024:.1f} MB (now {now / 1024:.1f} MB)",
            data={"vm_hwm_kb": peak, "vm_rss_kb": now},
        )
    ]
