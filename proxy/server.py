"""The proxy port's aiohttp application: routes and the one middleware every request crosses."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from proxy.accounting import record_outcome
from proxy.errors import ApiError, error_response
from proxy.handlers.embeddings import embeddings
from proxy.handlers.generative import chat_completions, completions
from proxy.handlers.moderations import moderations
from proxy.handlers.passthrough import PASSTHROUGH, body_too_large, passthrough
from proxy.health import healthz, readyz
from proxy.runtime import RUNTIME, Runtime

log = logging.getLogger("sidecache.proxy")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

UNDERSTOOD = {
    "/v1/chat/completions": ("chat.completions", chat_completions),
    "/v1/completions": ("completions", completions),
    "/v1/embeddings": ("embeddings", embeddings),
    "/v1/moderations": ("moderations", moderations),
}
_ENDPOINT_BY_PATH = {path: name for path, (name, _) in UNDERSTOOD.items()}


def create_proxy_app(runtime: Runtime) -> web.Application:
    max_body = int(runtime.settings.server.max_body_mb * 1024 * 1024)
    app = web.Application(client_max_size=max_body, middlewares=[_answer_and_observe])
    app[RUNTIME] = runtime
    for path, (_, handler) in UNDERSTOOD.items():
        app.router.add_post(path, handler)
    app.router.add_route("*", "/v1/{tail:.*}", passthrough)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app


@web.middleware
async def _answer_and_observe(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turns every failure into an OpenAI-shaped answer and records the request's metrics."""
    started = time.perf_counter()
    response: web.StreamResponse
    try:
        response = await handler(request)
    except ApiError as exc:
        response = exc.response()
    except web.HTTPRequestEntityTooLarge:
        limit = request.app[RUNTIME].settings.server.max_body_mb
        response = body_too_large(int(limit * 1024 * 1024)).response()
    except web.HTTPException as exc:
        response = _http_error(request, exc)
    except Exception:
        log.exception("unexpected error answering %s %s", request.method, request.path)
        response = error_response(500, "The sidecar failed to answer this request.")
    endpoint = _ENDPOINT_BY_PATH.get(request.path)
    if endpoint is None and request.path.startswith("/v1/"):
        endpoint = PASSTHROUGH
    if endpoint is not None:
        runtime = request.app[RUNTIME]
        elapsed = time.perf_counter() - started
        cache = response.headers.get("X-Cache", "NONE")
        runtime.metrics.observe_request(endpoint, cache, response.status, elapsed)
        record_outcome(runtime.ledger, request, response, elapsed, cache)
    return response


def _http_error(request: web.Request, exc: web.HTTPException) -> web.Response:
    if exc.status == 404:
        message = f"Unknown route {request.method} {request.path}; the API lives under /v1/."
        return error_response(404, message, code="unknown_url")
    if exc.status == 405:
        return error_response(405, f"Method {request.method} is not allowed on {request.path}.")
    return error_response(exc.status, exc.reason)
