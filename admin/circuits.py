"""Circuit breakers on the admin API: list them, and reset one or all (audited)."""

from __future__ import annotations

from datetime import UTC, datetime

from aiohttp import web

from admin.audit import audit
from admin.auth import CALLER
from admin.models import Circuit, Circuits, LastFailure, ResetAnswer, ResetBody
from admin.wire import json_answer, read_body
from proxy.failures import InvalidRequest
from proxy.runtime import Runtime
from proxy.workers import Mesh
from proxy.workers.mesh import ResetNotice


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
        ))  # fmt: skip
    return Circuits(upstream=board.upstream, circuits=out)


class CircuitApi:
    def __init__(self, runtime: Runtime, mesh: Mesh | None = None) -> None:
        self.runtime = runtime
        self.mesh = mesh  # the sibling workers: a reset reaches theirs too

    async def list(self, request: web.Request) -> web.Response:
        return json_answer(circuits(self.runtime))

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
