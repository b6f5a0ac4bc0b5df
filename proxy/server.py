"""The proxy port's aiohttp application: routes and the one middleware every request crosses."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from proxy.accounting import FIRST_EVENT, OUTCOME, record_outcome
from proxy.content import capture_answer
from proxy.errors import (
    anthropic_error_response,
    anthropic_failure_response,
    error_response,
    failure_response,
    http_error_response,
)
from proxy.failures import BodyTooLarge, ClientGone, Failure, UnreadableBody
from proxy.handlers.answers import MISS_HEADERS
from proxy.handlers.downgrade import DOWNGRADED_FROM_HEADER
from proxy.handlers.embeddings import embeddings
from proxy.handlers.generative import chat_completions, completions
from proxy.handlers.hot import PREPARED, TABLE_BYTES, KnownRequests, PreparedEntries
from proxy.handlers.messages import messages
from proxy.handlers.moderations import moderations
from proxy.handlers.passthrough import passthrough
from proxy.handlers.pipeline import KNOWN
from proxy.handlers.responses import responses
from proxy.health import healthz, readyz
from proxy.ids import SerialIds
from proxy.limits import Limiter, RatedResponse, add_rate_headers
from proxy.runtime import RUNTIME, Runtime
from proxy.spans import answer_body, finish_server_span, operation
from proxy.vocabulary import PASSTHROUGH, Endpoint

log = logging.getLogger("sidecache.proxy")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

UNDERSTOOD: dict[Endpoint, Handler] = {
    Endpoint.CHAT: chat_completions,
    Endpoint.COMPLETIONS: completions,
    Endpoint.EMBEDDINGS: embeddings,
    Endpoint.MODERATIONS: moderations,
    Endpoint.RESPONSES: responses,
    Endpoint.MESSAGES: messages,
}
_ENDPOINT_BY_PATH = {endpoint.path: endpoint.value for endpoint in UNDERSTOOD}
REQUEST_ID = "X-Request-ID"
# The route whose own errors are answered in Anthropic's shape, not OpenAI's.
_ANTHROPIC_SHAPED = Endpoint.MESSAGES.value


def create_proxy_app(runtime: Runtime) -> web.Application:
    max_body = runtime.settings.server.max_body_bytes
    # Request bodies are inflated by proxy/body.py within bounds, never by aiohttp's parser
    # (which inflates a gzip bomb whole before a handler runs).
    app = web.Application(
        client_max_size=max_body,
        # Tracing's middleware is there only when tracing is on: off, it costs a request nothing.
        middlewares=[_traced, _answer_and_observe] if runtime.tracer.on else [_answer_and_observe],
        handler_args={"auto_decompress": False},
    )
    app[RUNTIME] = runtime
    app[KNOWN] = KnownRequests(TABLE_BYTES)
    app[PREPARED] = PreparedEntries(TABLE_BYTES)
    app.on_response_prepare.append(_AnswerHeaders(runtime.limiter))
    for endpoint, handler in UNDERSTOOD.items():
        app.router.add_post(endpoint.path, handler)
    app.router.add_route("*", "/v1/{tail:.*}", passthrough)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app


@web.middleware
async def _traced(request: web.Request, handler: Handler) -> web.StreamResponse:
    """An understood request's server span (proxy/spans.py), around everything the next
    middleware does: its answer, failures answered included, is what the span describes."""
    endpoint = _ENDPOINT_BY_PATH.get(request.path)
    if endpoint is None:
        return await handler(request)
    tracer = request.app[RUNTIME].tracer
    with tracer.server_span(operation(endpoint), request.headers) as span:
        response = await handler(request)
        body = answer_body(request, response)
        capture_answer(tracer, request, body)
        finish_server_span(span, request, response, endpoint, body)
    return response


@web.middleware
async def _answer_and_observe(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turns every failure into an OpenAI-shaped answer (Anthropic-shaped on /v1/messages; a
    miss's carries its cache headers) and records the request's metrics and ledger outcome."""
    started = time.perf_counter()
    runtime = request.app[RUNTIME]
    endpoint = _ENDPOINT_BY_PATH.get(request.path)
    anthropic = endpoint == _ANTHROPIC_SHAPED
    render = anthropic_failure_response if anthropic else failure_response
    response: web.StreamResponse
    try:
        if endpoint is None:
            response = await handler(request)
        else:  # an understood request holds its whole body while it is answered
            held = runtime.bodies.acquire(request)
            try:
                response = await handler(request)
            finally:
                runtime.bodies.release(held)
    except Failure as exc:
        response = render(exc)
        miss_headers = request.get(MISS_HEADERS)
        if miss_headers is not None:
            response.headers.update(miss_headers)
        if isinstance(exc, UnreadableBody):
            response.force_close()  # the rest of the connection's bytes cannot be trusted
        elif isinstance(exc, ClientGone):  # not the sidecar's failure, nor an attack: INFO
            log.info("the client closed %s %s before its answer", request.method, request.path)
    except web.HTTPRequestEntityTooLarge:
        response = render(BodyTooLarge(runtime.settings.server.max_body_bytes))
    except web.HTTPException as exc:
        response = _http_error(request, exc)
    except Exception:
        log.exception("unexpected error answering %s %s", request.method, request.path)
        message = "The sidecar failed to answer this request."
        response = (anthropic_error_response if anthropic else error_response)(500, message)
    if endpoint is None and request.path.startswith("/v1/"):
        endpoint = PASSTHROUGH
    if endpoint is not None:
        elapsed = time.perf_counter() - started
        cache = response.headers.get("X-Cache", "NONE")
        runtime.metrics.observe_request(endpoint, cache, response.status, elapsed)
        record_outcome(runtime.ledger, request, response, elapsed, cache)
        outcome = request.get(OUTCOME)
        if outcome is not None:
            first_event: float | None = None
            if type(response) is web.StreamResponse and response.status == 200:
                first = request.get(FIRST_EVENT)  # a live stream's; a replay's is its end
                first_event = elapsed if first is None else first - started
            runtime.metrics.observe_answer(
                endpoint, cache, elapsed, outcome.upstream_ms, first_event
            )
    return response


class _AnswerHeaders:
    """Every answer of the proxy port carries an `X-Request-ID`: the upstream's when it is
    relayed (a miss, a pass-through, an upstream error), else one of the sidecar's own (a hit,
    the sidecar's own errors), so the SDKs' `_request_id` is set on every answer; and, while any
    limit may apply (an admin override may turn limits on), the `x-ratelimit-*` headers of what
    was decided; on a downgraded request's answer (hit, miss or error alike), the model the
    client asked for (a budget override read at run time may bring a downgrade table). A
    response signal rather than the middleware: streamed answers send their headers inside the
    handler, and this runs just before any answer's headers are sent. One signal for all: each
    costs every answer a coroutine."""

    def __init__(self, limiter: Limiter) -> None:
        self._ids = SerialIds("req_")
        self._limiter = limiter

    async def __call__(self, request: web.Request, response: web.StreamResponse) -> None:
        headers = response.headers
        if REQUEST_ID not in headers:
            headers[REQUEST_ID] = self._ids()
        if self._limiter.active and type(response) is not RatedResponse:
            add_rate_headers(request, headers)
        outcome = request.get(OUTCOME)  # an understood request's: no absent key raised
        if outcome is not None and outcome.downgraded_from is not None:
            headers[DOWNGRADED_FROM_HEADER] = outcome.downgraded_from


def _http_error(request: web.Request, exc: web.HTTPException) -> web.Response:
    if exc.status == 404:
        message = f"Unknown route {request.method} {request.path}; the API lives under /v1/."
        return error_response(404, message, code="unknown_url")
    if exc.status == 405:
        message = f"Method {request.method} is not allowed on {request.path}."
        return http_error_response(exc, message)
    return http_error_response(exc, exc.reason)
