"""The admin JSON API's routes under `/api/admin/` (docs/design.md §6)."""

from __future__ import annotations

import msgspec
from aiohttp import web

from admin.cache_ops import CacheApi
from admin.circuits import CircuitApi
from admin.dashboard import Dashboard
from admin.openapi import PREFIX, openapi_document
from admin.queries import QueryRunner
from admin.rate_limits import RateLimitApi
from admin.report.route import REPORT_PATH, ReportApi
from admin.warming import Warmer
from proxy.runtime import Runtime
from proxy.workers import Mesh


def add_api_routes(
    app: web.Application, runtime: Runtime, proxy_url: str, mesh: Mesh | None = None
) -> None:
    """`proxy_url`: this sidecar's own proxy port, which warming jobs send their requests to;
    `mesh`: the sibling workers, which are asked for the warming jobs they run."""
    board = Dashboard(runtime, QueryRunner(runtime.ledger.sink))
    breakers = CircuitApi(runtime, mesh)
    warmer = Warmer(proxy_url)
    cache = CacheApi(runtime, warmer, mesh)

    async def stop_warming(app: web.Application) -> None:
        await warmer.close()

    app.on_cleanup.append(stop_warming)
    document = msgspec.json.encode(
        openapi_document(runtime.settings.persona, list(runtime.breakers.breakers))
    )

    async def openapi(request: web.Request) -> web.Response:
        return web.Response(body=document, content_type="application/json")

    app.router.add_get("/api/admin/openapi.json", openapi)
    app.router.add_get(f"{PREFIX}/overview", board.overview)
    app.router.add_get(f"{PREFIX}/costs", board.costs)
    app.router.add_get(f"{PREFIX}/performance", board.performance)
    app.router.add_get(f"{PREFIX}/users", board.users)
    app.router.add_get(f"{PREFIX}/cache", board.cache)
    app.router.add_post(f"{PREFIX}/cache/invalidate", cache.invalidate)
    app.router.add_post(f"{PREFIX}/cache/feedback", cache.feedback)
    app.router.add_post(f"{PREFIX}/cache/warm", cache.warm)
    app.router.add_get(f"{PREFIX}/cache/warm", cache.warm_jobs)
    app.router.add_get(f"{PREFIX}/cache/warm/{{job}}", cache.warm_job)
    app.router.add_get(f"{PREFIX}/circuits", breakers.list)
    app.router.add_post(f"{PREFIX}/circuits/reset", breakers.reset)
    app.router.add_get(f"{PREFIX}/upstreams", breakers.upstreams)
    app.router.add_get(REPORT_PATH, ReportApi(runtime).report)
    limits = RateLimitApi(runtime)
    app.router.add_get(f"{PREFIX}/rate-limits", limits.list)
    app.router.add_put(f"{PREFIX}/rate-limits", limits.put)
    app.router.add_delete(f"{PREFIX}/rate-limits", limits.delete)
