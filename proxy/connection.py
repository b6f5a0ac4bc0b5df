"""Both ports' HTTP connections: aiohttp's own, with two guards it does not have (issue 19).

1. **Parser-level errors never echo the request.** When aiohttp's HTTP parser rejects a request
   (a control byte in a header, a bad request line, a line too long...) the exception's message
   quotes the offending bytes, `Authorization` values included, and aiohttp's
   `RequestHandler.handle_error` sends that message as a text/plain 400 *and* logs it with a
   traceback at ERROR. `handle_error` is overridden here: the answer is OpenAI-shaped
   (docs/design.md §7) and names only the kind of error; the log is one WARNING line without
   bytes or traceback. A 500/504 from an exception no middleware caught keeps aiohttp's
   traceback in the log (that is a bug worth seeing) but also answers OpenAI-shaped.
2. **A request head must arrive within `HEADER_READ_TIMEOUT`.** aiohttp has no header timeout:
   a client sending its head one byte at a time holds a connection (and a slot under the
   process's file limit) for as long as it likes. Like nginx's `client_header_timeout`, a timer
   runs from the connection's start until its first complete head, and for every later request
   from the first byte of its head until the head is complete; on expiry the connection is
   closed. An idle keep-alive connection (no byte after an answer) is left to aiohttp's
   `keepalive_timeout`, and a body being uploaded is never timed by this guard.
3. **An `Expect` other than `100-continue` is a 417 in the OpenAI shape (issue 23).** aiohttp
   checks `Expect` before any middleware runs (`Application._handle` calls the route's expect
   handler), answering a text/plain 417 that echoes the header's value; a value with a byte
   that is not UTF-8 cannot even be encoded there, and every route of both ports, `/healthz`
   included, answered a 500 with a traceback. The check is made here instead, in front of the
   application, for every route alike (aiohttp's 404 and 405 routes cannot be given an expect
   handler); a `100-continue` is still aiohttp's to answer.

How it is installed: aiohttp builds each connection's protocol in `web.Server.__call__`, which
always instantiates `RequestHandler`, and `AppRunner` builds the `Server` inside
`Application._make_handler`; neither takes a class. The least intrusive hook is
`GuardedAppRunner`, an `AppRunner` whose `_make_server` lets aiohttp build its `Server` as
usual (application start-up, `handler_args`, runner keyword arguments all unchanged) and then
hands the same handler, request factory and keyword arguments to `GuardedServer`, a `Server`
whose only changes are to build `GuardedRequestHandler` and to check `Expect` before the
application's handler. Private names used: `AppRunner.
_make_server`, `Server._kwargs`, and, in the handler, `_request_count` (how many heads the parser
has produced); all exist unchanged since aiohttp 3.0. Both ports (proxy/cli.py) and the test
fixture (tests/fixtures/sidecar.py) start their applications through `GuardedAppRunner`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import hdrs, http_exceptions, web
from aiohttp.http import HttpVersion11
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from proxy.errors import error_response

log = logging.getLogger("sidecache.connection")

# What each parser error is called in answers and logs: never the exception's own message, which
# quotes the request bytes. Most specific first (isinstance order).
_KIND_OF_PARSER_ERROR: tuple[tuple[type[Exception], str], ...] = (
    (http_exceptions.BadHttpMethod, "The request method is not valid HTTP."),
    (http_exceptions.BadStatusLine, "The request line is not valid HTTP."),
    (http_exceptions.LineTooLong, "The request line or a header is too long."),
    (http_exceptions.InvalidHeader, "A request header is not valid HTTP."),
    (http_exceptions.InvalidURLError, "The request target is not a valid URL."),
    (http_exceptions.TransferEncodingError, "The chunked request body is malformed."),
    (http_exceptions.ContentLengthError, "The request body does not match its length."),
    (http_exceptions.PayloadEncodingError, "The request body's encoding is not valid."),
)
_MALFORMED = "The request is not valid HTTP."
# aiohttp's C parser raises a plain BadHttpMessage whose message starts with llhttp's fixed
# reason, then the bytes. The reason is only compared with these keys: the answer is always our
# own text, so no byte of the request can reach it even if the message's format changes.
_HEADER_NAME = "A request header name contains a character HTTP does not allow."
_HEADER_VALUE = "A request header value contains a character HTTP does not allow."
_TARGET = "The request target contains a character HTTP does not allow."
_LINE_END = "A request line or header does not end with CRLF."
_FRAMING = "The request's Content-Length or Transfer-Encoding is not valid."
_KIND_OF_LLHTTP_REASON = {
    "Invalid header value char": _HEADER_VALUE,
    "Invalid header field char": _HEADER_NAME,
    "Invalid header token": _HEADER_NAME,
    "Invalid method encountered": "The request method is not valid HTTP.",
    "Invalid char in url path": _TARGET,
    "Invalid char in url query": _TARGET,
    "Invalid char in url fragment start": _TARGET,
    "Invalid characters in url": _TARGET,
    "Invalid HTTP version": "The request line's HTTP version is not valid.",
    "Missing expected CR after header value": _LINE_END,
    "Missing expected LF after header value": _LINE_END,
    "Expected LF after CR": _LINE_END,
    "Expected CRLF after version": _LINE_END,
    "Duplicate Content-Length": _FRAMING,
    "Invalid character in Content-Length": _FRAMING,
    "Content-Length can't be present with Transfer-Encoding": _FRAMING,
    "Request has invalid `Transfer-Encoding`": _FRAMING,
}


def parser_error_message(exc: BaseException | None) -> str:
    """The kind of a parser error, in words that contain none of the request's bytes."""
    if isinstance(exc, http_exceptions.HttpProcessingError):
        reason = str(exc.message).partition(":")[0].strip()
        if reason in _KIND_OF_LLHTTP_REASON:
            return _KIND_OF_LLHTTP_REASON[reason]
    for cls, message in _KIND_OF_PARSER_ERROR:
        if isinstance(exc, cls):
            return message
    return _MALFORMED


class GuardedRequestHandler(RequestHandler):
    """Times each request head: from the connection's start for the first, from its first byte
    for the next ones (an idle keep-alive connection and a body being uploaded are not timed).

    One timer per connection, re-armed only when it fires early: a head that arrives in one
    read (nearly every one) costs no timer at all, and one in pieces costs a clock read, not a
    timer made and cancelled per request (that cost hits ~4 us each)."""

    __slots__ = ("_body", "_head_since", "_head_timeout_s", "_head_timer")

    def __init__(self, manager: web.Server, *, header_read_timeout: float, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._head_timeout_s = header_read_timeout
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_since: float | None = None  # when the head being awaited began
        # The body of the newest request whose head arrived: bytes arriving while it is still
        # open are body bytes, not a head.
        self._body: Any = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._head_began()  # the first head is due from the connection's start

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        self._head_since = self._body = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._messages:  # a complete head arrived (or a parser error, answered now)
            self._body = self._messages[-1][1]
            self._head_since = None
        elif data and self._head_since is None and (self._body is None or self._body.is_eof()):
            self._head_began()  # the first bytes of a next head: from now on it is timed

    def _head_began(self) -> None:
        self._head_since = self._loop.time()
        if self._head_timer is None:
            self._arm_head_timer(self._head_since + self._head_timeout_s)

    def _arm_head_timer(self, due: float) -> None:
        self._head_timer = self._loop.call_at(due, self._head_timer_fired)

    def _head_timer_fired(self) -> None:
        self._head_timer = None
        since = self._head_since
        if since is None or self.transport is None:
            return  # no head is being awaited: the next one arms the timer again
        due = since + self._head_timeout_s
        if self._loop.time() < due:
            self._arm_head_timer(due)  # a later head than the one the timer was armed for
            return
        peer = self.transport.get_extra_info("peername")
        log.warning(
            "closed a connection from %s: no complete request head within %gs "
            "(HEADER_READ_TIMEOUT)",
            peer[0] if isinstance(peer, tuple) else "unknown",
            self._head_timeout_s,
        )
        self.force_close()

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if isinstance(exc, http_exceptions.HttpProcessingError):
            text = parser_error_message(exc)
            # Non-HTTP traffic on the first request (scanners, TLS to a plain port) is noise.
            first_bad_method = self._request_count == 1 and isinstance(
                exc, http_exceptions.BadHttpMethod
            )
            level = logging.DEBUG if first_bad_method else logging.WARNING
            log.log(level, "refused a malformed request from %s: %s", request.remote, text)
            response = error_response(status, text, code="malformed_request")
        else:
            # An exception no middleware caught: a bug, logged with its traceback as aiohttp
            # does, answered in the OpenAI shape without it.
            self.log_exception("Error handling request from %s", request.remote, exc_info=exc)
            text = "The sidecar failed to answer this request."
            if status == 504:
                text = "The sidecar timed out answering this request."
            response = error_response(status, text)
        if request.writer.output_size > 0:  # an answer already began: nothing more can be said
            raise ConnectionError("Response is sent already, cannot send another response")
        response.force_close()
        return response


RequestHandlerFunction = Callable[[BaseRequest], Awaitable[web.StreamResponse]]


def checking_expect(handle: RequestHandlerFunction) -> RequestHandlerFunction:
    """`handle`, behind a 417 for an HTTP/1.1 `Expect` that is not `100-continue` (where
    aiohttp's own expect handler would refuse it). The value is neither answered nor logged."""

    async def handle_request(request: BaseRequest) -> web.StreamResponse:
        expect = request.headers.get(hdrs.EXPECT)
        if expect and request.version == HttpVersion11 and expect.lower() != "100-continue":
            log.warning(
                "refused a request from %s: its Expect header is not 100-continue",
                request.remote,
            )
            return error_response(
                417,
                "The only expectation this server meets is Expect: 100-continue.",
                param="Expect",
                code="expectation_failed",
            )
        return await handle(request)

    return handle_request


class GuardedServer(web.Server):
    """aiohttp's `Server`, building `GuardedRequestHandler` connections and checking `Expect`
    before the application's handler."""

    def __init__(self, built: web.Server, *, header_read_timeout: float) -> None:
        super().__init__(
            checking_expect(built.request_handler),
            request_factory=built.request_factory,
            handler_cancellation=built.handler_cancellation,
            **built._kwargs,
        )
        self._header_read_timeout = header_read_timeout

    def __call__(self) -> GuardedRequestHandler:
        return GuardedRequestHandler(
            self, loop=self._loop, header_read_timeout=self._header_read_timeout, **self._kwargs
        )


class GuardedAppRunner(web.AppRunner):
    """`web.AppRunner` whose connections are `GuardedRequestHandler`s."""

    def __init__(self, app: web.Application, *, header_read_timeout: float, **kwargs: Any):
        super().__init__(app, **kwargs)
        self._header_read_timeout = header_read_timeout

    async def _make_server(self) -> web.Server:
        built = await super()._make_server()
        return GuardedServer(built, header_read_timeout=self._header_read_timeout)
