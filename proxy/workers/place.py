"""A worker's side of the supervisor: its place, its own settings, and its supervisor watch."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import msgspec

from proxy.ledger.factory import journal_path
from proxy.settings import Settings

log = logging.getLogger("sidecache.workers")


@dataclass(frozen=True, slots=True)
class WorkerPlace:
    """A worker's index among WORKERS and the supervisor's run directory."""

    index: int
    run_dir: Path

    def settings(self, settings: Settings) -> Settings:
        """The worker's own ledger journal (a journal file has one writer): LEDGER_JOURNAL (or
        its default) with `.worker-I` added; a restarted worker replays its predecessor's."""
        journal = f"{journal_path(settings.ledger)}.worker-{self.index}"
        ledger = msgspec.structs.replace(settings.ledger, journal_path=journal)
        return msgspec.structs.replace(settings, ledger=ledger)


def stop_when_orphaned(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
    """A worker's stdin is the supervisor's pipe: its end (the supervisor is gone, even by
    SIGKILL) drains the worker as SIGTERM does."""
    fd = sys.stdin.fileno()

    def readable() -> None:
        if not os.read(fd, 4096):
            loop.remove_reader(fd)
            log.warning("the supervisor is gone: draining")
            stop.set()

    loop.add_reader(fd, readable)
