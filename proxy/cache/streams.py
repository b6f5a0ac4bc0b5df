"""Each understood endpoint's stream format, in the two directions the cache needs: read while a
streamed miss is relayed (is it whole, what is the answer it makes), and rebuilt from a stored
answer for a streamed hit. A format is named by its kind (the adapter's `stream_kind`); a stored
answer says its own kind (`owns`), so a hit is replayed in the format it was answered in.

Adding an endpoint's stream is writing its `StreamFormat` and listing it in `FORMATS`.
"""

from __future__ import annotations

from enum import Enum
from typing import Any, Protocol

import msgspec

_decode = msgspec.json.Decoder().decode


class Fed(Enum):
    """What one SSE event's data was to a stream being read."""

    PART = "part"  # a piece of the answer, relayed to every reader
    USAGE_ONLY = "usage_only"  # the usage alone: relayed only to a reader that asked for it
    DONE = "done"  # the stream's own end (relayed): the answer is whole
    BROKEN = "broken"  # not a valid event of this format, or an error event: nothing is stored


class Assembly(Protocol):
    """One streamed answer being read, event by event."""

    def feed(self, data: bytes) -> Fed:
        """Reads one event's `data:` payload."""
        ...

    def whole(self) -> dict[str, Any] | None:
        """The answer a `stream: false` request would have received; None unless the stream
        ended as its format says a whole answer ends (and nothing was broken)."""
        ...


class StreamFormat(Protocol):
    kind: str

    def assembly(self) -> Assembly: ...

    def owns(self, answer: dict[str, Any]) -> bool:
        """Whether a stored answer is of this format."""
        ...

    def replay(self, answer: dict[str, Any], include_usage: bool) -> bytes:
        """The whole SSE stream (every event, its end included) of a stored answer.
        `include_usage` is chat's `stream_options.include_usage`; other formats ignore it."""
        ...


class UnknownStream(ValueError):
    """A stored or streamed answer no format owns: a programming error, never client input."""


def stream_format(kind: str, formats: tuple[StreamFormat, ...]) -> StreamFormat:
    for candidate in formats:
        if candidate.kind == kind:
            return candidate
    raise UnknownStream(f"no stream format {kind!r}")


def replay_answer(body: bytes, include_usage: bool, formats: tuple[StreamFormat, ...]) -> bytes:
    """A stored JSON answer as the whole SSE stream it would have been, in its own format."""
    answer = _decode(body)
    if isinstance(answer, dict):
        for candidate in formats:
            if candidate.owns(answer):
                return candidate.replay(answer, include_usage)
    raise UnknownStream("a stored answer that no stream format owns")
