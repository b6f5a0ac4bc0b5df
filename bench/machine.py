"""How busy the machine was with other work while the bench ran.

On a shared 2-core machine another process's CPU use lowers every figure, so the table says how
many cores *other* processes used on average: all busy CPU time (/proc/stat) minus this driver's
and its reaped children's (the servers, hey and wrk; `getrusage`).
"""

from __future__ import annotations

import os
import resource
import time
from pathlib import Path

BUSY_WARNING_CORES = 0.2


def _busy_s() -> float:
    """CPU time spent not idle since boot, all cores (first line of /proc/stat)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()
    ticks = [int(value) for value in fields[1:9]]  # user .. steal; guest time is inside user
    idle = ticks[3] + ticks[4]  # idle + iowait
    return (sum(ticks) - idle) / os.sysconf("SC_CLK_TCK")


def pin(pid: int, cpus: set[int]) -> None:
    """Every thread of a running process onto `cpus` (threads it starts later inherit it)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        os.sched_setaffinity(int(task.name), cpus)


def split_cpus() -> tuple[set[int], set[int]]:
    """This machine's CPUs as (one for the servers, the rest for the load generators); both
    the one CPU on a machine of one."""
    cpus = sorted(os.sched_getaffinity(0))
    return {cpus[0]}, set(cpus[1:]) or {cpus[0]}


def process_cpu_s(pid: int) -> float:
    """User + system CPU time of a running process (/proc/PID/stat fields 14 and 15)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # fields from 3 (state) on
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _own_s() -> float:
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


class CpuMeter:
    """Call `foreign_cores()` after every child process has been waited for."""

    def __init__(self) -> None:
        self.load_before = os.getloadavg()
        self._wall = time.monotonic()
        self._busy = _busy_s()
        self._own = _own_s()

    def foreign_cores(self) -> float:
        wall = time.monotonic() - self._wall
        foreign = (_busy_s() - self._busy) - (_own_s() - self._own)
        return max(foreign, 0.0) / wall if wall > 0 else 0.0

    def note(self, cores: float) -> str:
        load = " / ".join(f"{x:.2f}" for x in self.load_before)
        text = (
            f"Other processes used {cores:.2f} of {os.cpu_count()} cores during the run "
            f"(load average before: {load})."
        )
        if cores > BUSY_WARNING_CORES:
            text += " The machine was busy: treat the figures as pessimistic."
        return text
