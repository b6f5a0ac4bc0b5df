"""An append-only journal of ledger batches the database could not take (docs/design.md §5).

File format: a sequence of frames, each `length (u32 BE) | crc32 (u32 BE) | msgpack payload`,
the payload being a list of records as records.pack makes them (arrays; older journals hold
maps, or arrays in an earlier field order, which are still read). Every append is fsync'd
before it returns. A crash can only leave a torn frame at the end; `open()` cuts the file back
to its last whole frame. Replaying a frame twice is harmless: the sinks insert by record id and
ignore ids they have. File work runs in worker threads, never on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import os
import struct
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import msgspec

from proxy.ledger.records import COLUMNS, LedgerRecord, pack, packed_batch, split_batch

log = logging.getLogger("sidecache.ledger")
_HEADER = struct.Struct(">II")
MAX_FRAME_BYTES = 256 * 1024 * 1024
_decode_maps = msgspec.msgpack.Decoder(list[LedgerRecord]).decode
_MAP_MARKERS = frozenset((*range(0x80, 0x90), 0xDE, 0xDF))
# The field order of packed records before the fields took the table's (records.COLUMNS): a
# format of the past, spelled out as it was. Its fourth field is a text, today's a map.
_EARLIER_ORDER = (
    *("id", "tenant", "request_type", "model", "user_id", "persona", "prompt_tokens"),
    *("completion_tokens", "cached_tokens", "cost", "saved_cost", "response_time_ms"),
    *("upstream_ms", "cache_hit", "cache_status", "status", "created_at"),
)
# The columns appended since (cache_match, similarity, the token kinds of 004) take their
# defaults.
_FROM_EARLIER = [_EARLIER_ORDER.index(column) for column in COLUMNS[: len(_EARLIER_ORDER)]]
_decode_arrays = msgspec.msgpack.Decoder(list[list[Any]]).decode
_encode = msgspec.msgpack.Encoder().encode


def encode_frame(packed: list[bytes]) -> bytes:
    """A frame of packed records (records.pack)."""
    payload = packed_batch(packed)
    return _HEADER.pack(len(payload), zlib.crc32(payload)) + payload


def _packed_records(payload: bytes) -> list[bytes]:
    packed = split_batch(payload)
    if packed and packed[0][0] in _MAP_MARKERS:  # records as maps: an older journal
        return [pack(rec) for rec in _decode_maps(payload)]
    if packed and _in_earlier_order(packed[0]):  # a frame is written by one version
        return [_encode([fields[i] for i in _FROM_EARLIER]) for fields in _decode_arrays(payload)]
    return packed


def _in_earlier_order(packed: bytes) -> bool:
    fields = msgspec.msgpack.decode(packed)
    return (
        isinstance(fields, list)
        and len(fields) == len(_EARLIER_ORDER)
        and isinstance(fields[3], str)
    )


def read_frames(fh: BinaryIO, offset: int = 0) -> Iterator[tuple[int, list[bytes]]]:
    """(end offset, packed records) of each whole, intact frame of `fh` from `offset`, read one
    frame at a time; stops at the end or at the first torn or corrupt frame."""
    fh.seek(offset)
    while True:
        header = fh.read(_HEADER.size)
        if len(header) < _HEADER.size:
            return
        length, crc = _HEADER.unpack(header)
        if length > MAX_FRAME_BYTES:
            return
        payload = fh.read(length)
        if len(payload) < length or zlib.crc32(payload) != crc:
            return
        try:
            records = _packed_records(payload)
        except msgspec.DecodeError:
            return
        offset += _HEADER.size + length
        yield offset, records


class Journal:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.pending_records = 0  # records in the file, as far as this process knows
        self._size = 0

    @property
    def pending(self) -> bool:
        return self._size > 0

    async def open(self) -> None:
        await asyncio.to_thread(self._open_sync)

    def _open_sync(self) -> None:
        """Counts what an earlier run left and cuts a torn tail (a crash mid-append)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        good, count, size = 0, 0, 0
        try:
            with self.path.open("r+b") as fh:
                size = os.fstat(fh.fileno()).st_size
                for frame_end, records in read_frames(fh):
                    good, count = frame_end, count + len(records)
                if good < size:
                    log.warning(
                        "ledger journal %s: cut %d bytes of a torn or corrupt tail",
                        self.path,
                        size - good,
                    )
                    fh.truncate(good)
                    os.fsync(fh.fileno())
        except FileNotFoundError:
            pass
        self._size, self.pending_records = good, count
        if count:
            log.info("ledger journal %s holds %d records to replay", self.path, count)

    async def append(self, packed: list[bytes]) -> None:
        """Appends packed records (records.pack) as one frame."""
        frame = encode_frame(packed)
        await asyncio.to_thread(self.append_sync, frame)
        self.pending_records += len(packed)

    def append_sync(self, frame: bytes) -> None:
        """Appends one encoded frame and fsyncs; on failure the file is cut back to where it
        was, so a half-written frame never hides the ones after it."""
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            before = os.fstat(fd).st_size
            try:
                os.write(fd, frame)
                os.fsync(fd)
            except OSError:
                os.ftruncate(fd, before)
                raise
            self._size = before + len(frame)
        finally:
            os.close(fd)
        if before == 0:
            _fsync_dir(self.path.parent)

    async def read_from(self, offset: int, max_records: int) -> tuple[list[bytes], int]:
        """Whole frames from `offset` until at least `max_records` records (or the end):
        (packed records, next offset)."""
        return await asyncio.to_thread(self._read_sync, offset, max_records)

    def _read_sync(self, offset: int, max_records: int) -> tuple[list[bytes], int]:
        out: list[bytes] = []
        end = offset
        try:
            with self.path.open("rb") as fh:
                for frame_end, records in read_frames(fh, offset):
                    out += records
                    end = frame_end
                    if len(out) >= max_records:
                        break
        except FileNotFoundError:
            pass
        return out, end

    async def clear(self, expected_end: int | None = None) -> None:
        """Empties the journal once everything in it is in the database. Bytes past
        `expected_end` (the end of what could be read) are unreadable frames: they are moved
        to a `.corrupt-<time>` file for an operator rather than silently dropped."""
        await asyncio.to_thread(self._clear_sync, expected_end)
        self._size, self.pending_records = 0, 0

    def _clear_sync(self, expected_end: int | None) -> None:
        try:
            with self.path.open("r+b") as fh:
                size = os.fstat(fh.fileno()).st_size
                if expected_end is not None and size > expected_end:
                    fh.seek(expected_end)
                    kept = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
                    kept.write_bytes(fh.read())
                    log.error(
                        "ledger journal %s: %d unreadable bytes moved to %s",
                        self.path,
                        size - expected_end,
                        kept,
                    )
                fh.truncate(0)
                os.fsync(fh.fileno())
        except FileNotFoundError:
            pass


def _fsync_dir(directory: Path) -> None:
    """Makes a newly created journal file's directory entry durable."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
