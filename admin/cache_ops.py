"""The cache mutations of the admin API: invalidate by selectors, feedback on semantic hits,
and warming jobs (audited)."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import msgspec
from aiohttp import web

from admin.audit import audit
from admin.auth import CALLER
from admin.cache_models import (
    Feedback,
    FeedbackBody,
    InvalidateBody,
    Invalidated,
    WarmBody,
    WarmJobs,
)
from admin.warming import Warmer, persona_headers
from admin.wire import json_answer, read_body
from proxy.directives import DIMS_HEADER, SCOPE_HEADER, parse_directives
from proxy.failures import Conflict, InvalidRequest, NotAuthenticated, NotFound
from proxy.invalidation.selectors import canonical
from proxy.runtime import Runtime

ADMIN = "admin"
MAX_WARM_REQUESTS = 10_000
_HEX_KEY = re.compile(r"[0-9a-fA-F]{16}(?:[0-9a-fA-F]{48})?")
SHORT_ID_LENGTH = 16  # proxy.keys.CacheKey.short_id: the digest's first 16 hex digits


class CacheApi:
    def __init__(self, runtime: Runtime, warmer: Warmer) -> None:
        self.runtime = runtime
        self.warmer = warmer

    async def invalidate(self, request: web.Request) -> web.Response:
        body = await read_body(request, InvalidateBody)
        personas = self.runtime.personas
        selectors = [
            canonical(s, personas, f"selectors[{i}]") for i, s in enumerate(body.selectors)
        ]
        invalidations = self.runtime.invalidations
        stamp = await invalidations.invalidate(selectors, source=ADMIN)
        audited = await audit(
            self.runtime.ledger.sink,
            request[CALLER],
            "cache.invalidate",
            {"selectors": msgspec.to_builtins(selectors)},
            {"generation": stamp.generation},
        )
        at = datetime.fromtimestamp(stamp.at, UTC).isoformat().replace("+00:00", "Z")
        return json_answer(Invalidated(
            generation=stamp.generation, at=at, selectors=selectors,
            rules_held=invalidations.rules, audited=audited,
        ))  # fmt: skip

    async def feedback(self, request: web.Request) -> web.Response:
        """A semantic hit reported wrong: removed from the semantic index on every replica
        (docs/design.md §10). Only `wrong: true` is taken; there is nothing to do for a right
        answer."""
        body = await read_body(request, FeedbackBody)
        if not _HEX_KEY.fullmatch(body.key):  # the schema's `$` lets a final newline through
            raise InvalidRequest("`key` is an X-Cache-Key: 16 or 64 hex digits.", param="key")
        if not body.wrong:
            raise InvalidRequest("Only wrong answers are reported: `wrong` must be true.",
                                 param="wrong")  # fmt: skip
        semantic = self.runtime.semantic
        if semantic is None:
            raise Conflict("The semantic cache is off on this sidecar (SEMANTIC_CACHE).",
                           code="semantic_cache_off")  # fmt: skip
        short_id = body.key[:SHORT_ID_LENGTH].lower()
        indexed_here = await semantic.mark_wrong(short_id)
        audited = await audit(
            self.runtime.ledger.sink,
            request[CALLER],
            "cache.feedback",
            {"key": short_id},
            {"wrong": True, "indexed_here": indexed_here},
        )
        return json_answer(
            Feedback(key=short_id, wrong=True, indexed_here=indexed_here, audited=audited)
        )

    async def warm(self, request: web.Request) -> web.Response:
        body = await read_body(request, WarmBody)
        headers = {"Authorization": f"Bearer {body.api_key}"}
        try:
            tenant = self.runtime.tenants.resolve(headers).tenant
        except NotAuthenticated as exc:
            raise InvalidRequest(exc.message, param="api_key") from None
        if body.scope is not None:
            headers[SCOPE_HEADER] = body.scope
        if body.persona_dims is not None:
            headers[DIMS_HEADER] = body.persona_dims
        try:
            parse_directives(headers)
        except InvalidRequest as exc:
            field = "scope" if exc.param == SCOPE_HEADER else "persona_dims"
            raise InvalidRequest(exc.message, param=field) from None
        for i, persona in enumerate(body.personas):
            try:
                self.runtime.personas.parse(persona_headers(persona))
            except InvalidRequest as exc:
                raise InvalidRequest(exc.message, param=f"personas[{i}]") from None
            if body.scope == "user" and persona.user_id is None:
                raise InvalidRequest("scope user needs a user_id in every persona.",
                                  param=f"personas[{i}].user_id")  # fmt: skip
        total = len(body.requests) * max(1, len(body.personas))
        if total > MAX_WARM_REQUESTS:
            raise InvalidRequest(f"A job is at most {MAX_WARM_REQUESTS} requests (requests times "
                              f"personas); this one is {total}.", param="requests")  # fmt: skip
        if body.scope == "user" and not body.personas:
            raise InvalidRequest("scope user needs personas with user_id.", param="personas")
        job = self.warmer.start(body, headers, tenant)
        await audit(
            self.runtime.ledger.sink,
            request[CALLER],
            "cache.warm",
            {"tenant": tenant, "job": job.id},
            {"requests": len(body.requests), "personas": len(body.personas), "total": job.total},
        )
        return json_answer(job, status=202)

    async def warm_job(self, request: web.Request) -> web.Response:
        job_id = request.match_info["job"]
        job = self.warmer.get(job_id)
        if job is None:
            raise NotFound(f"No warming job {job_id[:40]!r} on this replica.", param="job")
        return json_answer(job)

    async def warm_jobs(self, request: web.Request) -> web.Response:
        return json_answer(WarmJobs(jobs=self.warmer.jobs()))
