"""The `drip_ms` knob: an upstream that answers 200, then trickles filler bytes and never ends.

Each byte arrives well inside any between-bytes (read) timeout, so only a total deadline ends
the call; the fake counts the drips whose client closed the connection (`abandoned`), so
a test can see that an abandoned call was really cancelled upstream.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from .inputs import BODY_KEY
from .state import FakeUpstream

# SSE: a comment event, which every client ignores; JSON: whitespace before the value.
_SSE_FILLER = b":\n\n"
_JSON_FILLER = b" "
_POLL_S = 0.01  # how soon a closed connection is noticed


def _streamed(request: web.Request) -> bool:
    body = request[BODY_KEY].value
    return isinstance(body, dict) and body.get("stream") is True


async def drip(
    request: web.Request, fake: FakeUpstream, stopping: asyncio.Event
) -> web.StreamResponse:
    """Holds the answer open until the knob is cleared, the client leaves or the app stops;
    the body is never a whole answer. A large `drip_ms` is an upstream that sends its headers
    and then nothing."""
    streamed = _streamed(request)
    content_type = "text/event-stream; charset=utf-8" if streamed else "application/json"
    response = web.StreamResponse(headers={"Content-Type": content_type})
    await response.prepare(request)
    filler = _SSE_FILLER if streamed else _JSON_FILLER
    loop = asyncio.get_running_loop()
    due = loop.time()
    while fake.drip_ms is not None and not stopping.is_set():
        transport = request.transport
        try:
            if transport is None or transport.is_closing():
                raise ConnectionResetError
            if loop.time() >= due:
                await response.write(filler)
                due = loop.time() + fake.drip_ms / 1000
        except ConnectionResetError:
            fake.abandoned += 1
            return response
        await asyncio.sleep(_POLL_S)
    return response
