"""Every other `/v1/*` route: streamed through unchanged in both directions, never cached.

Bodies are not buffered: the request streams upstream as it arrives (its size still capped by
MAX_BODY_MB) and the answer streams back byte for byte, compressed or not.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from proxy.failures import BodyTooLarge, UpstreamError
from proxy.runtime import RUNTIME
from proxy.upstream.headers import client_response_headers, upstream_request_headers
from proxy.vocabulary import PASSTHROUGH

_READ_CHUNK = 64 * 1024


async def passthrough(request: web.Request) -> web.StreamResponse:
    runtime = request.app[RUNTIME]
    identity = runtime.tenants.resolve(request.headers)
    limit = runtime.settings.server.max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise BodyTooLarge(limit)
    headers = upstream_request_headers(
        request.headers, identity.upstream_authorization, keep_encoding=True
    )
    body = _CappedBody(request.content, limit) if request.body_exists else None
    # The path and query as the client encoded them: decoding and re-encoding would change
    # what the upstream reads (an escaped `/` or `+`, for one).
    path, query = request.rel_url.raw_path, request.rel_url.raw_query_string
    started = time.perf_counter()
    try:
        upstream = await runtime.upstream_client.send(
            request.method, path, headers, body, query=query, decompress=False
        )
    except UpstreamError:
        if body is not None and body.exceeded:
            # The HTTP client reports the aborted upload as a connection error: it was ours.
            raise BodyTooLarge(limit) from None
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


class _CappedBody:
    """The request body as it arrives, cut off with a 413 past `limit` bytes (a chunked body
    has no Content-Length to check up front)."""

    def __init__(self, content: aiohttp.StreamReader, limit: int) -> None:
        self._content = content
        self._limit = limit
        self.exceeded = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        sent = 0
        async for chunk in self._content.iter_chunked(_READ_CHUNK):
            sent += len(chunk)
            if sent > self._limit:
                self.exceeded = True
                raise BodyTooLarge(self._limit)
            yield chunk
