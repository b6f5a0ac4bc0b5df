"""Ids the sidecar makes per request, cheaply (no syscall per id)."""

from __future__ import annotations

import itertools
import secrets


class SerialIds:
    """Unique ids in OpenAI's form, `prefix` + 32 hex digits: 64 random bits drawn once per
    instance, then a 64-bit counter (uuid4() reads the OS's random source on every call, a
    syscall per id; see proxy/ledger/records.py RecordIds). Used for the sidecar's own
    `X-Request-ID`s and for the ids of a micro-batch's shares, one per request.

    The counter starts at 2**64, whose hex() is '0x1' followed by the 16 low digits: slicing
    costs a fraction of formatting them."""

    def __init__(self, prefix: str) -> None:
        self._head = f"{prefix}{secrets.randbits(64):016x}"
        self._next = itertools.count(_SERIAL_START)

    def __call__(self) -> str:
        return self._head + hex(next(self._next))[3:]


_SERIAL_START = 1 << 64
