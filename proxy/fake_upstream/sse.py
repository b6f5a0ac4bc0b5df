"""Server-sent events out: chunk delays, the cut-stream knob and quiet client disconnects."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from .state import FakeUpstream
from .wire import encode_event

_DONE = b"data: [DONE]\n\n"


class SseStream:
    """Writes `data:` events; after a cut or a client disconnect every send is a no-op."""

    def __init__(self, request: web.Request, fake: FakeUpstream) -> None:
        self._request = request
        self._fake = fake
        self._response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream; charset=utf-8",
                "Cache-Control": "no-cache",
            }
        )
        self._sent = 0
        self._ended = False

    @property
    def response(self) -> web.StreamResponse:
        return self._response

    async def open(self) -> None:
        await self._response.prepare(self._request)
        self._cut_if_due()

    async def send(self, payload: Any) -> None:
        await self._write(encode_event(payload), counts=True)

    async def send_typed(self, payload: dict[str, Any]) -> None:
        """A typed event (the Responses API's): `event: <type>` before its data."""
        name = str(payload["type"]).encode()
        await self._write(b"event: " + name + b"\n" + encode_event(payload), counts=True)

    async def finish(self, *, done: bool = True) -> web.StreamResponse:
        """Sends `[DONE]` (unless `done` is False: the Responses API's streams end with their
        last event) unless the stream was already cut or abandoned.

        aiohttp writes the terminator itself and treats a vanished client quietly.
        """
        if done:
            await self._write(_DONE, counts=False)
        return self._response

    async def _write(self, data: bytes, *, counts: bool) -> None:
        if self._ended:
            return
        delay = self._fake.chunk_delay_ms
        if self._sent and delay > 0:
            await asyncio.sleep(delay / 1000)
        try:
            await self._response.write(data)
        except ConnectionResetError:
            # The client went away (aiohttp raises ClientConnectionResetError, a subclass).
            self._ended = True
            return
        if counts:
            self._sent += 1
            self._cut_if_due()

    def _cut_if_due(self) -> None:
        """Closes the socket without the chunked terminator: the client sees a broken body."""
        cut = self._fake.cut_stream_after
        if cut is None or self._sent < cut:
            return
        self._ended = True
        transport = self._request.transport
        if transport is not None:
            transport.close()
