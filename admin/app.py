"""The admin port's aiohttp application (control plane). It reads the data plane's Runtime;
the data plane never imports this package."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client.aiohttp import make_aiohttp_handler

from admin.api import add_api_routes
from admin.auth import auth_middleware
from admin.page import add_page_routes
from admin.wire import ADMIN_BODY_BYTES
from proxy.errors import error_response, failure_response, http_error_response
from proxy.failures import Failure
from proxy.health import healthz, readyz
from proxy.runtime import RUNTIME, Runtime
from proxy.workers import Mesh

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def create_admin_app(runtime: Runtime, proxy_url: str, mesh: Mesh | None = None) -> web.Application:
    """`proxy_url` is where this sidecar's proxy port answers (warming jobs go through it);
    `mesh`: this worker's siblings (WORKERS > 1), whose metrics and admin actions it shares."""
    admin = runtime.settings.admin
    app = web.Application(
        client_max_size=ADMIN_BODY_BYTES,
        middlewares=[_openai_shaped_http_errors, auth_middleware(admin.tokens, admin.user_ids)],
        # Bodies are inflated by admin/wire.py, bounded, and only when a handler reads one:
        # aiohttp's own inflating would also run on bodies nobody reads (and log their errors).
        handler_args={"auto_decompress": False},
    )
    app[RUNTIME] = runtime
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    add_page_routes(app)  # GET / (the dashboard) and /static/*: no token, the API checks it
    # Prometheus text format, negotiated from Accept (0.0.4 unless the scraper asks for more).
    # Labels carry endpoints and statuses, never users or secrets.
    # With workers, the sum of every worker's figures (proxy/workers/merge.py).
    if mesh is None:
        app.router.add_get("/metrics", make_aiohttp_handler(runtime.metrics.registry))
    else:
        app.router.add_get("/metrics", mesh.merged_metrics)
    add_api_routes(app, runtime, proxy_url, mesh)
    return app


@web.middleware
async def _openai_shaped_http_errors(
    request: web.Request,
    handler: Handler,
) -> web.StreamResponse:
    try:
        response: web.StreamResponse = await handler(request)
    except Failure as exc:
        return failure_response(exc)
    except web.HTTPException as exc:
        if exc.status == 404:
            return error_response(404, f"Unknown admin route {request.path}.", code="unknown_url")
        if exc.status == 405:
            message = f"Method {request.method} is not allowed on {request.path}."
            return http_error_response(exc, message)
        return http_error_response(exc, exc.reason)
    return response
