"""Liveness and readiness, shared by the proxy and admin ports."""

from __future__ import annotations

from aiohttp import web

from proxy.runtime import RUNTIME


async def healthz(request: web.Request) -> web.Response:
    """Alive: the process answers. Nothing else is checked."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready to serve. A cache backend that does not answer leaves the sidecar serving as a
    pass-through (misses only), and a ledger database that does not answer leaves records in
    the journal, so either is reported as `degraded` with status 200: taking the pod out of
    service would take the app down with it."""
    runtime = request.app[RUNTIME]
    reachable = await runtime.store.ping()
    ledger = runtime.ledger.stats
    return web.json_response(
        {
            "status": "ready" if reachable and ledger.sink_up else "degraded",
            "cache": {"backend": runtime.store.backend, "reachable": reachable},
            "ledger": {
                "sink": ledger.sink,
                "reachable": ledger.sink_up,
                "journal_pending": ledger.journal_pending,
            },
            "mode": "managed" if runtime.settings.managed_mode else "pass-through",
        }
    )
