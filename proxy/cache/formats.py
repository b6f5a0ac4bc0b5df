"""Every stream format the sidecar reads and replays (proxy/cache/streams.py), in one list."""

from __future__ import annotations

from proxy.cache.messages_stream import MessageStream
from proxy.cache.replay import CHAT, TEXT, ChunkStream
from proxy.cache.responses_stream import ResponsesStream
from proxy.cache.streams import StreamFormat, replay_answer, stream_format

FORMATS: tuple[StreamFormat, ...] = (
    ChunkStream(CHAT),
    ChunkStream(TEXT),
    ResponsesStream(),
    MessageStream(),
)


def format_of(kind: str) -> StreamFormat:
    return stream_format(kind, FORMATS)


def replay_stream(body: bytes, include_usage: bool) -> bytes:
    """A stored JSON answer as the whole SSE stream it would have been, in its own format."""
    return replay_answer(body, include_usage, FORMATS)
