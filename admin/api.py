"""The admin JSON API's routes under `/api/admin/` (DESIGN §6)."""

from __future__ import annotations

import msgspec
from aiohttp import web

from admin.circuits import CircuitApi
from admin.dashboard import Dashboard
from admin.openapi import PREFIX, openapi_document
from admin.queries import QueryRunner
from proxy.runtime import Runtime


def add_api_routes(app: web.Application, runtime: Runtime) -> None:
    board = Dashboard(runtime, QueryRunner(runtime.ledger.sink))
    breakers = CircuitApi(runtime)
    document = msgspec.json.encode(openapi_document())

    async def openapi(request: web.Request) -> web.Response:
        return web.Response(body=document, content_type="application/json")

    app.router.add_get("/api/admin/openapi.json", openapi)
    app.router.add_get(f"{PREFIX}/overview", board.overview)
    app.router.add_get(f"{PREFIX}/costs", board.costs)
    app.router.add_get(f"{PREFIX}/performance", board.performance)
    app.router.add_get(f"{PREFIX}/users", board.users)
    app.router.add_get(f"{PREFIX}/cache", board.cache)
    app.router.add_get(f"{PREFIX}/circuits", breakers.list)
    app.router.add_post(f"{PREFIX}/circuits/reset", breakers.reset)
