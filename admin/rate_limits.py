"""Rate limits on the admin API (docs/design.md §13): the limits and each tenant's current use,
and per-tenant or per-user overrides, set and removed (audited) on every replica."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from aiohttp import web

from admin.audit import audit
from admin.auth import CALLER
from admin.wire import json_answer, read_body
from proxy.limits import ScopeUse
from proxy.limits.scopes import LimitOverride
from proxy.runtime import Runtime

Limit = Annotated[int, msgspec.Meta(ge=0, le=10**12)]
Id = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
# Tenants listed with their current use, newest first (each is one read of the counter).
TENANTS_SHOWN = 50


class RateLimitBody(msgspec.Struct, forbid_unknown_fields=True):
    """One tenant's or user's limits; a field left out keeps the setting's (0: no limit)."""

    scope: Literal["tenant", "user"]
    id: Id
    rpm: Limit | None = None
    tpm: Limit | None = None


class RateLimitTarget(msgspec.Struct, forbid_unknown_fields=True):
    scope: Literal["tenant", "user"]
    id: Id


class LimitUse(msgspec.Struct):
    limit: int
    used: int
    remaining: int
    reset_ms: int


class TenantUse(msgspec.Struct):
    tenant: str
    requests: LimitUse | None
    tokens: LimitUse | None


class RateDefaults(msgspec.Struct):
    tenant_rpm: int
    tenant_tpm: int
    user_rpm: int
    user_tpm: int
    window_s: float


class RateLimits(msgspec.Struct):
    defaults: RateDefaults
    backend: str  # where use is counted: "redis" (every replica) or "memory" (this process)
    overrides: list[RateLimitBody]
    tenants: list[TenantUse]  # tenants this replica counted lately, their current use
    budget_downgrades: int  # this replica's over-budget downgrades since it started


class RateLimitSaved(msgspec.Struct):
    override: RateLimitBody
    audited: bool


class RateLimitDeleted(msgspec.Struct):
    deleted: bool
    audited: bool


def _use(use: ScopeUse | None) -> LimitUse | None:
    if use is None:
        return None
    return LimitUse(use.limit, use.used, max(0, use.limit - use.used), use.reset_ms)


def _body(row: LimitOverride) -> RateLimitBody:
    scope: Literal["tenant", "user"] = "user" if row.scope == "user" else "tenant"
    return RateLimitBody(scope, row.id, row.rpm, row.tpm)


class RateLimitApi:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    async def list(self, request: web.Request) -> web.Response:
        limiter, cfg = self.runtime.limiter, self.runtime.settings.rate
        tenants = []
        for tenant in list(reversed(limiter.seen))[:TENANTS_SHOWN]:
            decision = await limiter.usage(tenant)
            if decision is not None:
                tenants.append(TenantUse(tenant, _use(decision.requests), _use(decision.tokens)))
        defaults = RateDefaults(
            cfg.tenant_rpm, cfg.tenant_tpm, cfg.user_rpm, cfg.user_tpm, cfg.window_s
        )
        overrides = [_body(row) for row in self.runtime.limit_overrides.rows]
        registry = self.runtime.metrics.registry
        downgrades = registry.get_sample_value("sidecache_budget_downgrades_total") or 0
        return json_answer(
            RateLimits(defaults, limiter.counter.backend, overrides, tenants, int(downgrades))
        )

    async def put(self, request: web.Request) -> web.Response:
        body = await read_body(request, RateLimitBody, strict=False)
        overrides = self.runtime.limit_overrides
        before = {(r.scope, r.id): r for r in overrides.rows}.get((body.scope, body.id))
        await overrides.put(LimitOverride(body.scope, body.id, body.rpm, body.tpm))
        audited = await audit(
            self.runtime.ledger.sink,
            request[CALLER],
            "rate_limits.set",
            {"scope": body.scope, "id": body.id},
            {
                "before": None if before is None else {"rpm": before.rpm, "tpm": before.tpm},
                "after": {"rpm": body.rpm, "tpm": body.tpm},
            },
        )
        return json_answer(RateLimitSaved(body, audited))

    async def delete(self, request: web.Request) -> web.Response:
        body = await read_body(request, RateLimitTarget)
        deleted = await self.runtime.limit_overrides.delete(body.scope, body.id)
        audited = await audit(
            self.runtime.ledger.sink,
            request[CALLER],
            "rate_limits.delete",
            {"scope": body.scope, "id": body.id},
            {"deleted": deleted},
        )
        return json_answer(RateLimitDeleted(deleted, audited))
