"""Request bodies: read safely, inflated within bounds, and bounded in bytes held at once.

The proxy port's HTTP server does not decode request bodies itself (`auto_decompress=False`,
proxy/server.py): aiohttp's parser inflated a 30 KB gzip body to 30 MB before any handler could
look at it (issue 23). Here a `Content-Encoding: gzip` or `deflate` body is inflated by
`Inflater`, which stops as soon as the output crosses either bound, a 413:

- MAX_BODY_MB, the same absolute cap as an uncompressed body's;
- `INFLATION_RATIO` (100) times the compressed bytes read so far, with `INFLATION_FLOOR` (1 MB)
  always allowed: JSON compresses 5-20x, a repeated prompt rarely past 100x, a bomb 1000x.

A body without Content-Encoding (every hit in practice) is read as before, at no extra cost.

`read_body` turns a body that cannot be read as sent into a Failure rather than a 500 and a
traceback: not what its encoding says (or an encoding not decoded here), a 400; a client that
closed its connection before sending it all, ClientGone (499). It marks the payload finished so
aiohttp does not try to read the rest after answering.

`InflightBodies` bounds the bytes of the request bodies being held by understood requests at
once (MAX_INFLIGHT_BODY_MB): 30 concurrent 31 MB bodies once took the process past 2 GB. A
request whose body would cross it is answered 503 with Retry-After before its body is read.
Its size is its Content-Length, or the largest body allowed when it has none (chunked); a
compressed body counts its compressed bytes plus the most they may inflate to (at most the
largest body: a bomb's 30 KB reserve 3 MB, not 32).
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Mapping

from aiohttp import web

from proxy.failures import BodyTooLarge, ClientGone, Overloaded, UnreadableBody

_RETRY_AFTER_S = 1
INFLATION_RATIO = 100
INFLATION_FLOOR = 1 << 20
_ENCODING = "Content-Encoding"
_GZIP_WBITS = 16 + zlib.MAX_WBITS
_DECODED = frozenset({"gzip", "x-gzip", "deflate"})
_AS_SENT = frozenset({"", "identity"})
# Inflating is CPU work on the event loop: a body is fed in slices of compressed bytes small
# enough that even a bomb's (deflate inflates at most ~1,000x) makes ~1 MB at once, and the loop
# gets a turn every `_TURN_BYTES` inflated, so 16 bombs being inflated hold a hit a few ms.
_SLICE = 1024
_TURN_BYTES = 256 * 1024


class InflatesTooFar(BodyTooLarge):
    """A compressed body inflating past its bounds (413, like any body too large)."""

    def __init__(self, limit_bytes: int) -> None:
        super(BodyTooLarge, self).__init__(
            f"The request body inflates past what this sidecar accepts: at most "
            f"{INFLATION_RATIO}x its compressed size and {limit_bytes // (1024 * 1024)} MB.",
            param=_ENCODING,
        )


def content_encoding(headers: Mapping[str, str]) -> str | None:
    """The body's encoding if it must be decoded here (None: as sent), or UnreadableBody for
    one this sidecar does not decode."""
    value = headers.get(_ENCODING)
    if value is None:
        return None
    encoding = value.strip().lower()
    if encoding in _AS_SENT:
        return None
    if encoding not in _DECODED:
        raise UnreadableBody(
            f"The request body's Content-Encoding {value[:20]!r} is not one this sidecar "
            "decodes (gzip, deflate).",
            param=_ENCODING,
        )
    return encoding


class Inflater:
    """One compressed body, inflated chunk by chunk within MAX_BODY_MB and the ratio."""

    def __init__(self, encoding: str, limit_bytes: int) -> None:
        self._gzip = encoding != "deflate"
        self._limit = limit_bytes
        self._compressed = 0
        self._inflated = 0
        self._decoder: zlib._Decompress | None = None

    def feed(self, chunk: bytes | memoryview) -> bytes:
        self._compressed += len(chunk)
        allowed = min(self._limit, max(INFLATION_FLOOR, INFLATION_RATIO * self._compressed))
        out: list[bytes] = []
        data: bytes | memoryview = chunk
        try:
            while data:
                decoder = self._decoder_for(data)
                # One byte past what is allowed tells a body at the bound from one beyond it.
                piece = decoder.decompress(data, allowed - self._inflated + 1)
                self._inflated += len(piece)
                if self._inflated > allowed:
                    raise InflatesTooFar(self._limit)
                out.append(piece)
                data = decoder.unused_data if decoder.eof else decoder.unconsumed_tail
        except zlib.error:
            raise _unreadable("zlib.error") from None
        return b"".join(out)

    def finish(self) -> None:
        if self._compressed and (self._decoder is None or not self._decoder.eof):
            raise _unreadable("truncated")

    def _decoder_for(self, data: bytes | memoryview) -> zlib._Decompress:
        decoder = self._decoder
        if decoder is not None and not decoder.eof:
            return decoder
        if decoder is not None and not self._gzip:
            raise _unreadable("data after the end")  # gzip alone has members; deflate one stream
        if self._gzip:
            decoder = zlib.decompressobj(_GZIP_WBITS)
        else:  # RFC 1950 zlib, or the raw deflate some clients send (as aiohttp accepts)
            decoder = zlib.decompressobj(zlib.MAX_WBITS if data[0] & 0xF == 8 else -zlib.MAX_WBITS)
        self._decoder = decoder
        return decoder


def _unreadable(cause: str) -> UnreadableBody:
    return UnreadableBody(
        f"The request body could not be read as its Content-Encoding says ({cause}).",
        param=_ENCODING,
    )


async def read_body(request: web.Request) -> bytes:
    """The body as the server delivers it (the admin port's is decoded by aiohttp)."""
    try:
        return await request.read()
    except web.RequestPayloadError as exc:
        request.content.feed_eof()  # nothing more is to be read from this payload
        if client_left(request):
            raise ClientGone() from None
        cause = exc.__cause__ or exc
        encoding = request.headers.get(_ENCODING)
        what = f"as Content-Encoding: {encoding[:20]!r} says" if encoding else "as sent"
        raise UnreadableBody(
            f"The request body could not be read {what} ({type(cause).__name__}).",
            param=_ENCODING if encoding else "body",
        ) from None
    except ConnectionError:
        raise ClientGone() from None


async def read_inflated(request: web.Request, limit_bytes: int) -> bytes:
    """The proxy port's body, inflated if it is compressed (call it once the credential is
    checked: nothing is inflated for a request that is refused anyway)."""
    encoding = content_encoding(request.headers)
    raw = await read_body(request)
    if encoding is None:
        return raw
    inflater = Inflater(encoding, limit_bytes)
    out: list[bytes] = []
    since_turn = 0
    view = memoryview(raw)
    for start in range(0, len(raw), _SLICE):
        piece = inflater.feed(view[start : start + _SLICE])
        out.append(piece)
        since_turn += len(piece)
        if since_turn >= _TURN_BYTES:  # let other requests (hits) run between two slices
            since_turn = 0
            await asyncio.sleep(0)
    inflater.finish()
    return b"".join(out)


def client_left(request: web.BaseRequest) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


class InflightBodies:
    def __init__(self, limit_bytes: int, max_body_bytes: int) -> None:
        self.limit = limit_bytes
        self.held = 0
        self._max_body = max_body_bytes

    def size_of(self, request: web.BaseRequest) -> int:
        """What the request's body may take once read (and inflated)."""
        length = request.content_length
        if length is None:
            return self._max_body
        if _ENCODING in request.headers:
            # Capped at the largest body, so that one always fits (the settings check).
            inflated = max(INFLATION_FLOOR, INFLATION_RATIO * length)
            return min(self._max_body, length + inflated)
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
