"""The SQLite ledger's writer process: `python -m proxy.ledger.sqlite_helper PATH`.

Why a process: SQLite's work for a batch is C that runs with the GIL released, but a thread
doing it must take the GIL back after every call, and on a busy event loop, which releases and
re-takes the GIL around every callback, that thread is woken and put back to sleep hundreds of
times a batch: about one context switch per record, and a quarter of the cache-hit throughput
lost (bench/ledger_overhead.py). A process has its own GIL; the loop writes a batch to a pipe
as it was queued, packed (no encoding on the event loop), and the process does the rest:
decoding, rows, roll-ups and SQLite.

Protocol, both ways: frames of `length (u32 BE) | msgpack`. In: a list of records as
records.pack makes them. Out: the number of new rows, or `[refused, error type, message]`
(refused: the data itself was refused, retrying cannot help). The process ignores SIGINT and
SIGTERM (the sidecar's last flush on shutdown still goes through it) and exits when its input
closes, which is also what happens if the sidecar dies.
"""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import struct
import sys
from collections.abc import Sequence
from typing import BinaryIO

import msgspec

from proxy.ledger.records import packed_batch, unpack
from proxy.ledger.sqlite_rows import sqlite_row
from proxy.ledger.sqlite_sql import Inbox, connect_sqlite, is_refusal, prepare, write_batch

_LENGTH = struct.Struct(">I")
_encode = msgspec.msgpack.Encoder().encode
_decode_reply = msgspec.msgpack.Decoder(int | tuple[bool, str, str]).decode
STOP_TIMEOUT_S = 10.0
# SQLite's page cache: 2 MB by default; 8 MB keeps the indexes' hot pages (an eighth less CPU
# per row once the file outgrows 2 MB: 11.5 vs 10.0 us, measured; 32 MB gains no more).
CACHE_KIB = 8 * 1024


class WriterGone(OSError):
    """The writer process exited or could not be started: the database is unavailable."""


class WriterProcess:
    """The parent's end: starts the process on first use (and again after it died), sends
    one batch at a time and waits for its answer."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._proc: asyncio.subprocess.Process | None = None
        self._lock = asyncio.Lock()

    async def write(self, packed: list[bytes]) -> int:
        """The number of new rows among `packed` (records.pack). Raises WriterGone when the
        process is gone, and the sqlite3 error class of a refusal (IntegrityError) or of
        unavailability (OperationalError) with the process's error type and message."""
        payload = packed_batch(packed)
        async with self._lock:
            proc = self._proc or await self._start()
            try:
                assert proc.stdin is not None and proc.stdout is not None
                proc.stdin.writelines((_LENGTH.pack(len(payload)), payload))
                await proc.stdin.drain()
                (length,) = _LENGTH.unpack(await proc.stdout.readexactly(_LENGTH.size))
                reply = _decode_reply(await proc.stdout.readexactly(length))
            except (ConnectionError, asyncio.IncompleteReadError) as exc:
                self._discard()
                raise WriterGone(f"the SQLite writer process exited ({exc})") from exc
            except BaseException:  # cancelled mid-exchange: the pipes are out of step
                self._discard()
                raise
        if isinstance(reply, int):
            return reply
        refused, kind, message = reply
        error = sqlite3.IntegrityError if refused else sqlite3.OperationalError
        raise error(f"{kind}: {message}")

    async def _start(self) -> asyncio.subprocess.Process:
        try:
            self._proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                __name__,
                self.path,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
            )
        except OSError as exc:
            raise WriterGone(f"cannot start the SQLite writer process: {exc}") from exc
        return self._proc

    def _discard(self) -> None:
        if self._proc is not None and self._proc.returncode is None:
            self._proc.kill()
        self._proc = None

    async def close(self) -> None:
        """Closes its input and waits for it to finish (killed after STOP_TIMEOUT_S)."""
        async with self._lock:
            proc, self._proc = self._proc, None
        if proc is None:
            return
        assert proc.stdin is not None
        proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), STOP_TIMEOUT_S)
        except TimeoutError:
            proc.kill()
            await proc.wait()


def _read_frame(source: BinaryIO) -> bytes | None:
    header = source.read(_LENGTH.size)
    if len(header) < _LENGTH.size:
        return None
    (length,) = _LENGTH.unpack(header)
    payload = source.read(length)
    return payload if len(payload) == length else None


def serve(path: str, source: BinaryIO, sink: BinaryIO) -> None:
    """Writes every batch read from `source`, answering each on `sink`, until `source` ends."""
    conn: sqlite3.Connection | None = None
    inbox = Inbox(())
    while (frame := _read_frame(source)) is not None:
        try:
            if conn is None:
                conn = connect_sqlite(path)
                conn.execute("PRAGMA temp_store=MEMORY")  # the savepoint's journal: no file
                conn.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
                inbox = prepare(conn)
            rows = list(map(sqlite_row, unpack(frame)))
            reply = _encode(write_batch(conn, rows, inbox))
        except Exception as exc:
            if isinstance(exc, sqlite3.OperationalError) and conn is not None:
                conn.close()  # a fresh connection for the retry
                conn = None
            reply = _encode((is_refusal(exc), type(exc).__name__, str(exc)))
        sink.write(_LENGTH.pack(len(reply)) + reply)
        sink.flush()
    if conn is not None:
        conn.close()


def main(argv: Sequence[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m proxy.ledger.sqlite_helper PATH", file=sys.stderr)
        return 2
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    serve(args[0], sys.stdin.buffer, sys.stdout.buffer)
    return 0


if __name__ == "__main__":
    sys.exit(main())
