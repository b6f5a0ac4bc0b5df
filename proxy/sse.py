"""Server-sent events as OpenAI streams them: `data: <json>` events, ended by `data: [DONE]`."""

from __future__ import annotations

from collections.abc import Iterator

DONE = b"data: [DONE]\n\n"


class SseEvent:
    __slots__ = ("data", "raw")

    def __init__(self, raw: bytes, data: bytes | None) -> None:
        self.raw = raw  # the event exactly as received, separator included
        self.data = data  # the joined `data:` payload, or None for comment-only events


class SseParser:
    """Splits a byte stream into events at blank lines, tolerating any chunking and CRLF."""

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, chunk: bytes) -> Iterator[SseEvent]:
        self._buffer += chunk.replace(b"\r\n", b"\n") if b"\r" in chunk else chunk
        while True:
            end = self._buffer.find(b"\n\n")
            if end < 0:
                return
            raw = self._buffer[: end + 2]
            self._buffer = self._buffer[end + 2 :]
            yield SseEvent(raw, _data_of(raw))

    @property
    def pending(self) -> bytes:
        """Bytes received after the last complete event (non-empty means a cut stream)."""
        return self._buffer


def _data_of(raw: bytes) -> bytes | None:
    lines = [line for line in raw.split(b"\n") if line.startswith(b"data:")]
    if not lines:
        return None
    return b"\n".join(line[6:] if line.startswith(b"data: ") else line[5:] for line in lines)


def format_event(payload: bytes) -> bytes:
    return b"data: " + payload + b"\n\n"
