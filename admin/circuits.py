"""Circuit breakers on the admin API: list them, and reset one or all (audited)."""

from __future__ import annotations

from datetime import UTC, datetime
from urllib.parse import urlsplit

from aiohttp import web

from admin.audit import audit
from admin.auth import CALLER
from admin.models import (
    Circuit,
    Circuits,
    FallbackCount,
    LastFailure,
    ResetAnswer,
    ResetBody,
    UpstreamHealth,
    Upstreams,
)
from admin.wire import json_answer, read_body
from proxy.failures import InvalidRequest
from proxy.runtime import Runtime
from proxy.upstream.routes import DEFAULT
from proxy.workers import Mesh
from proxy.workers.mesh import ResetNotice

_WORST = {"closed": 0, "half-open": 1, "open": 2}


def _iso(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).isoformat().replace("+00:00", "Z")


def circuits(runtime: Runtime) -> Circuits:
    board = runtime.breakers
    out = []
    for name, breaker in board.breakers.items():
        failed = board.last_failure.get(name)
        opened = breaker.opened_at()
        out.append(Circuit(
            name=name, state=breaker.state, failures=breaker.failures,
            last_failure=LastFailure(at=_iso(failed[0]), error=failed[1]) if failed else None,
            opened_at=opened.isoformat().replace("+00:00", "Z") if opened else None,
            opened_count=board.opened_count.get(name, 0),
            upstream=board.upstream_of.get(name, DEFAULT),
        ))  # fmt: skip
    return Circuits(upstream=board.upstream, circuits=out)


def upstreams(runtime: Runtime) -> Upstreams:
    """Each upstream's health (its worst breaker), its share of the answers, its retries, and
    the fallbacks between upstreams, as this replica counted them since start-up."""
    guarded, board = runtime.upstream, runtime.breakers
    stats = guarded.stats
    served_all = sum(stats.served.values())
    out = []
    for name, route in guarded.routes.routes.items():
        states = [b.state for n, b in board.breakers.items() if board.upstream_of.get(n) == name]
        served = stats.served.get(name, 0)
        out.append(UpstreamHealth(
            name=name, host=_host(route.base_url or runtime.settings.upstream.base_url),
            models=list(route.models),
            state=max(states, key=lambda s: _WORST.get(s, 2), default="closed"),
            served=served, share=round(served / served_all, 6) if served_all else 0.0,
            retries=stats.retries.get(name, 0),
        ))  # fmt: skip
    moved = [FallbackCount(a, b, n) for (a, b), n in sorted(stats.fallbacks.items())]
    return Upstreams(upstreams=out, fallbacks=moved, retries=sum(stats.retries.values()),
                     fallbacks_total=sum(stats.fallbacks.values()))  # fmt: skip


def _host(url: str) -> str:
    """host[:port] of a base URL: never its user info, path or query."""
    parts = urlsplit(url)
    return (parts.hostname or "") + (f":{parts.port}" if parts.port else "")


class CircuitApi:
    def __init__(self, runtime: Runtime, mesh: Mesh | None = None) -> None:
        self.runtime = runtime
        self.mesh = mesh  # the sibling workers: a reset reaches theirs too

    async def list(self, request: web.Request) -> web.Response:
        return json_answer(circuits(self.runtime))

    async def upstreams(self, request: web.Request) -> web.Response:
        return json_answer(upstreams(self.runtime))

    async def reset(self, request: web.Request) -> web.Response:
        body = await read_body(request, ResetBody, optional=True)
        board = self.runtime.breakers
        if body.breaker is not None and body.breaker not in board.breakers:
            known = ", ".join(board.breakers)
            raise InvalidRequest(f"Unknown breaker {body.breaker[:64]!r}; one of: {known}.",
                              param="breaker")  # fmt: skip
        before = {name: b.state for name, b in board.breakers.items()}
        states = board.reset(body.breaker)
        if self.mesh is not None:  # every worker has its own breakers
            await self.mesh.broadcast("/circuits/reset", ResetNotice(body.breaker))
        names: list[str] = [body.breaker] if body.breaker else list(board.breakers)
        audited = await audit(
            self.runtime.ledger.sink,
            request[CALLER],
            "circuits.reset",
            {"breaker": body.breaker},
            {"before": before, "after": states},
        )
        return json_answer(ResetAnswer(reset=names, states=states, audited=audited))
