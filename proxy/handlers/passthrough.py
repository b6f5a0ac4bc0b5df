"""Every other `/v1/*` route: streamed through unchanged in both directions, never cached.

Bodies are not buffered: the request streams upstream as it arrives (its size still capped by
MAX_BODY_MB) and the answer streams back byte for byte, compressed or not. A compressed request
body is inflated here as it streams, within the bounds of proxy/body.py, and goes upstream
without its Content-Encoding (the upstream is sent what the headers say, issue 23): one that
does not inflate is the client's mistake, a 400, not a 502.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from urllib.parse import unquote

import aiohttp
from aiohttp import web

from proxy.body import Inflater, client_left, content_encoding
from proxy.failures import (
    BodyTooLarge,
    ClientGone,
    Failure,
    InvalidRequest,
    UnreadableBody,
    UpstreamError,
)
from proxy.runtime import RUNTIME
from proxy.upstream.headers import client_response_headers, upstream_request_headers
from proxy.vocabulary import PASSTHROUGH

_READ_CHUNK = 64 * 1024
_BASE = "/v1/"
# Layers of %-encoding undone when checking a path: an upstream (or a proxy before it) that
# decodes once more than it should must still find nothing to climb out with.
_DECODE_LAYERS = 4


async def passthrough(request: web.Request) -> web.StreamResponse:
    runtime = request.app[RUNTIME]
    # The path and query as the client encoded them: decoding and re-encoding would change
    # what the upstream reads (an escaped `/` or `+`, for one).
    path, query = request.rel_url.raw_path, request.rel_url.raw_query_string
    if not stays_under_base(path):
        raise InvalidRequest(f"The path must stay under {_BASE}: it may hold no . or .. segment.")
    identity = runtime.tenants.resolve(request.headers)
    limit = runtime.settings.server.max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise BodyTooLarge(limit)
    encoding = content_encoding(request.headers)
    headers = upstream_request_headers(
        request.headers,
        identity.upstream_authorization,
        keep_encoding=True,
        managed=identity.managed,
    )
    body = _RequestBody(request, limit, encoding) if request.body_exists else None
    started = time.perf_counter()
    try:
        upstream = await runtime.upstream_client.send(
            request.method, path, headers, body, query=query, decompress=False
        )
    except UpstreamError:
        if body is not None and body.failure is not None:
            # The HTTP client reports the aborted upload as a connection error: it was ours.
            raise body.failure from None
        raise
    runtime.metrics.observe_upstream(PASSTHROUGH, upstream.status, time.perf_counter() - started)
    response = web.StreamResponse(
        status=upstream.status,
        reason=upstream.reason,
        headers=client_response_headers(upstream.headers, decoded=False),
    )
    try:
        await response.prepare(request)
        async for chunk in upstream.content.iter_chunked(_READ_CHUNK):
            await response.write(chunk)
        await response.write_eof()
    except ConnectionResetError:
        upstream.close()  # the client left: drop the upstream connection rather than drain it
    except (TimeoutError, aiohttp.ClientError):
        upstream.close()  # the upstream failed mid-answer: the client must see a cut response
        if request.transport is not None:
            request.transport.close()
    else:
        upstream.release()
    return response


def stays_under_base(raw_path: str) -> bool:
    """Whether `raw_path`, and every %-decoding of it, resolves below /v1/ (the HTTP client
    and the upstream resolve `..` and `%2e%2e`; some take `\\` for `/`)."""
    path = raw_path
    for _ in range(_DECODE_LAYERS):
        if not _resolves_under_base(path.replace("\\", "/")):
            return False
        decoded = unquote(path)
        if decoded == path:
            return True
        path = decoded
    return False  # still encoded after that many layers: nobody's honest path


def _resolves_under_base(path: str) -> bool:
    kept: list[str] = []
    for segment in path.split("/"):
        if segment == "..":
            if not kept:
                return False
            kept.pop()
        elif segment != ".":
            kept.append(segment)
    return len(kept) > 2 and kept[0] == "" and kept[1] == _BASE.strip("/")


class _RequestBody:
    """The request body as it arrives, inflated if compressed, cut off with a 413 past `limit`
    bytes (a chunked body has no Content-Length to check up front). `failure` keeps why the
    upload stopped, which the HTTP client reports as a connection error."""

    def __init__(self, request: web.Request, limit: int, encoding: str | None) -> None:
        self._request = request
        self._limit = limit
        self._inflater = Inflater(encoding, limit) if encoding is not None else None
        self.failure: Failure | None = None

    async def __aiter__(self) -> AsyncIterator[bytes]:
        sent = 0
        try:
            async for chunk in self._chunks():
                sent += len(chunk)
                if sent > self._limit:
                    raise BodyTooLarge(self._limit)
                yield chunk
        except Failure as exc:
            self.failure = exc
            raise

    async def _chunks(self) -> AsyncIterator[bytes]:
        inflater = self._inflater
        try:
            async for chunk in self._request.content.iter_chunked(_READ_CHUNK):
                if inflater is not None:
                    chunk = inflater.feed(chunk)
                if chunk:  # an empty chunk may read as the end of a chunked upload
                    yield chunk
        except (web.RequestPayloadError, ConnectionError):
            if client_left(self._request):
                raise ClientGone() from None
            raise UnreadableBody(
                "The request body could not be read as sent.", param="body"
            ) from None
        if inflater is not None:
            inflater.finish()
