"""The supervisor of `sidecache serve --workers N`: starts N worker processes, restarts one that
dies (with back-off), and on SIGTERM/SIGINT drains them all.

A worker is `sidecache serve` itself, told its place (`--worker-index I --run-dir DIR`): it
binds both ports with SO_REUSEPORT, so the kernel spreads new connections over the workers. The
supervisor holds no port and serves nothing; it owns the run directory (the mesh's sockets,
mesh.py), removed when it stops. Each worker's stdin is a pipe from the supervisor: a worker
whose supervisor died (even by SIGKILL) reads its end and drains itself, so no orphan keeps the
ports.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import signal
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("sidecache.workers")
FIRST_DELAY_S = 0.5  # before the first restart of a worker; doubled while it keeps dying
MAX_DELAY_S = 15.0
STEADY_S = 30.0  # a worker up this long has recovered: its next death restarts it at once
# A worker drains in at most the CLI's grace (in-flight requests) plus its ledger flush.
STOP_TIMEOUT_S = 40.0

Command = Callable[[int, Path], list[str]]


def make_run_dir() -> Path:
    """A private directory for the mesh's sockets (0700)."""
    return Path(tempfile.mkdtemp(prefix="sidecache-workers-"))


class Supervisor:
    def __init__(self, count: int, command: Command, run_dir: Path) -> None:
        self.count = count
        self._command = command
        self.run_dir = run_dir
        self._stopping = asyncio.Event()
        self._procs: dict[int, asyncio.subprocess.Process] = {}
        self._codes: dict[int, int] = {}

    async def run(self) -> int:
        """Until SIGTERM/SIGINT; 0 when every worker drained and exited cleanly."""
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._stopping.set)
        try:
            keepers = [asyncio.create_task(self._keep(i)) for i in range(self.count)]
            await self._stopping.wait()
            log.info("supervisor: draining %d workers", self.count)
            for proc in self._procs.values():
                if proc.returncode is None:
                    proc.send_signal(signal.SIGTERM)
            await asyncio.gather(*keepers)
        finally:
            shutil.rmtree(self.run_dir, ignore_errors=True)
        failed = {i: code for i, code in self._codes.items() if code != 0}
        if failed:
            log.error("supervisor: workers that did not stop cleanly (exit codes): %s", failed)
        log.info("supervisor: stopped")
        return 1 if failed else 0

    async def _keep(self, index: int) -> None:
        """Runs worker `index` until the supervisor stops, restarting it when it dies."""
        delay = FIRST_DELAY_S
        while not self._stopping.is_set():
            started = time.monotonic()
            proc = await asyncio.create_subprocess_exec(
                *self._command(index, self.run_dir), stdin=asyncio.subprocess.PIPE
            )
            self._procs[index] = proc
            log.info("supervisor: worker %d started (pid %d)", index, proc.pid)
            if self._stopping.is_set():  # stopped while it was starting: it drains too
                proc.send_signal(signal.SIGTERM)
            code = await self._wait(proc)
            if self._stopping.is_set():
                self._codes[index] = code
                return
            if time.monotonic() - started >= STEADY_S:
                delay = FIRST_DELAY_S
            log.warning(
                "supervisor: worker %d (pid %d) exited with %d; restarting it in %.1f s",
                index,
                proc.pid,
                code,
                delay,
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)
            delay = min(delay * 2, MAX_DELAY_S)

    async def _wait(self, proc: asyncio.subprocess.Process) -> int:
        """The worker's exit code; one that outlives STOP_TIMEOUT_S after a stop is killed."""
        waiting = asyncio.ensure_future(proc.wait())
        stop = asyncio.ensure_future(self._stopping.wait())
        await asyncio.wait((waiting, stop), return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        if waiting.done():
            return waiting.result()
        try:
            return await asyncio.wait_for(waiting, STOP_TIMEOUT_S)
        except TimeoutError:
            log.error("supervisor: worker pid %d did not drain in time: killed", proc.pid)
            proc.kill()
            return await proc.wait()
