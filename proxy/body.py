"""Request bodies: read safely, and bounded in bytes held at once across all requests.

`read_body` turns a body aiohttp cannot decode (a `Content-Encoding: gzip` body that is not
gzip, a broken chunked encoding) into a 400 instead of a 500, and marks the payload finished
so aiohttp does not try to read the rest after answering (that read would fail again and log a
traceback for a client's mistake).

`InflightBodies` bounds the bytes of the request bodies being held by understood requests at
once (MAX_INFLIGHT_BODY_MB): 30 concurrent 31 MB bodies once took the process past 2 GB. A
request whose body would cross it is answered 503 with Retry-After before its body is read.
Its size is its Content-Length, or the largest body allowed when it has none (chunked) or is
compressed (the inflated size is unknown until read).
"""

from __future__ import annotations

from aiohttp import web

from proxy.failures import Overloaded, UnreadableBody

_RETRY_AFTER_S = 1


async def read_body(request: web.Request) -> bytes:
    try:
        return await request.read()
    except web.RequestPayloadError as exc:
        request.content.feed_eof()  # nothing more is to be read from this payload
        cause = exc.__cause__ or exc
        encoding = request.headers.get("Content-Encoding")
        what = f"as Content-Encoding: {encoding[:20]!r} says" if encoding else "as sent"
        raise UnreadableBody(
            f"The request body could not be read {what} ({type(cause).__name__}).",
            param="Content-Encoding" if encoding else "body",
        ) from None


class InflightBodies:
    def __init__(self, limit_bytes: int, max_body_bytes: int) -> None:
        self.limit = limit_bytes
        self.held = 0
        self._max_body = max_body_bytes

    def size_of(self, request: web.BaseRequest) -> int:
        """What the request's body may take once read."""
        length = request.content_length
        if length is None or "Content-Encoding" in request.headers:
            return self._max_body
        return min(length, self._max_body)

    def acquire(self, request: web.BaseRequest) -> int:
        """Counts the request's body until `release(size)`; its size, or Overloaded. (Two calls
        rather than a context manager: this runs on every hit, and @contextmanager costs more
        than the check itself.)"""
        size = self.size_of(request)
        if self.held + size > self.limit:  # one largest body always fits (settings check)
            raise Overloaded(
                "The sidecar is holding as many request bodies as it may "
                f"(MAX_INFLIGHT_BODY_MB); retry in {_RETRY_AFTER_S} s.",
                retry_after_s=_RETRY_AFTER_S,
            )
        self.held += size
        return size

    def release(self, size: int) -> None:
        self.held -= size
