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
    HEADER_TEXT,
    Feedback,
    FeedbackBody,
    InvalidateBody,
    Invalidated,
    WarmBody,
    WarmJob,
    WarmJobs,
    WarmPersona,
)
from admin.warming import Warmer, persona_headers
from admin.wire import json_answer, read_body
from proxy.directives import DIMS_HEADER, SCOPE_HEADER, parse_directives
from proxy.failures import Conflict, InvalidRequest, NotAuthenticated, NotFound
from proxy.invalidation.selectors import canonical
from proxy.persona import HEADER_BY_DIMENSION, USER_ID_HEADER, parse_user_id
from proxy.runtime import Runtime
from proxy.workers import Mesh
from proxy.workers.mesh import InvalidateNotice

ADMIN = "admin"
MAX_WARM_REQUESTS = 10_000
_HEX_KEY = re.compile(r"[0-9a-fA-F]{16}(?:[0-9a-fA-F]{48})?")
SHORT_ID_LENGTH = 16  # proxy.keys.CacheKey.short_id: the digest's first 16 hex digits
_HEADER_TEXT = re.compile(HEADER_TEXT.removeprefix("^").removesuffix("$"))
# The header a persona check names -> the field of a warming persona it came from.
_PERSONA_FIELD = {header: f".{dim}" for dim, header in HEADER_BY_DIMENSION.items()}
_PERSONA_FIELD[USER_ID_HEADER] = ".user_id"
_JOB_ID = re.compile(r"warm_[0-9a-f]{16}")  # admin/warming.py's ids
_decode_job = msgspec.json.Decoder(WarmJob).decode
_decode_jobs = msgspec.json.Decoder(WarmJobs).decode


class CacheApi:
    def __init__(self, runtime: Runtime, warmer: Warmer, mesh: Mesh | None = None) -> None:
        self.runtime = runtime
        self.warmer = warmer
        self.mesh = mesh  # the sibling workers: their jobs are listed and found too
        if mesh is not None:
            mesh.app.router.add_get("/warm", self._local_warm_jobs)
            mesh.app.router.add_get("/warm/{job}", self._local_warm_job)

    async def invalidate(self, request: web.Request) -> web.Response:
        body = await read_body(request, InvalidateBody)
        for i, selector in enumerate(body.selectors):
            interests = (selector.persona or {}).get("interests")
            self._check_tag_count(interests, f"selectors[{i}].persona.interests")
        personas = self.runtime.personas
        selectors = [
            canonical(s, personas, f"selectors[{i}]") for i, s in enumerate(body.selectors)
        ]
        invalidations = self.runtime.invalidations
        stamp = await invalidations.invalidate(selectors, source=ADMIN)
        if self.mesh is not None and self.runtime.redis is None:  # Redis shares the rules
            await self.mesh.broadcast("/invalidate", InvalidateNotice(selectors))
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
        _check_header_texts(body)
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
            self._check_tag_count(persona.interests, f"personas[{i}].interests")
            try:
                self.runtime.personas.parse(persona_headers(persona))
                if persona.user_id is not None:  # what the proxy port will check, checked now
                    parse_user_id({USER_ID_HEADER: persona.user_id}, None)
            except InvalidRequest as exc:
                field = _PERSONA_FIELD.get(exc.param or "", "")
                raise InvalidRequest(exc.message, param=f"personas[{i}]{field}") from None
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

    def _check_tag_count(self, interests: str | None, param: str) -> None:
        """At most PERSONA_INTERESTS_MAX tags, repeats included: what the OpenAPI document can
        say (the proxy port counts distinct tags; a repeat means nothing to an admin call)."""
        most = self.runtime.settings.persona.interests_max
        if interests is not None and sum(1 for t in interests.split(",") if t.strip()) > most:
            raise InvalidRequest(f"At most {most} interest tags.", param=param)

    async def warm_job(self, request: web.Request) -> web.Response:
        job_id = request.match_info["job"]
        job = self.warmer.get(job_id)
        if job is None and self.mesh is not None and _JOB_ID.fullmatch(job_id):
            found = await self.mesh.ask_siblings("GET", f"/warm/{job_id}")
            job = next((_decode_job(body) for body in found.values()), None)
        if job is None:
            raise NotFound(f"No warming job {job_id[:40]!r} on this replica.", param="job")
        return json_answer(job)

    async def warm_jobs(self, request: web.Request) -> web.Response:
        jobs = self.warmer.jobs()
        if self.mesh is not None:
            for body in (await self.mesh.ask_siblings("GET", "/warm")).values():
                jobs += _decode_jobs(body).jobs
        return json_answer(WarmJobs(jobs=jobs))

    async def _local_warm_job(self, request: web.Request) -> web.Response:
        job = self.warmer.get(request.match_info["job"])
        if job is None:
            raise web.HTTPNotFound()
        return json_answer(job)

    async def _local_warm_jobs(self, request: web.Request) -> web.Response:
        return json_answer(WarmJobs(jobs=self.warmer.jobs()))


def _check_header_texts(body: WarmBody) -> None:
    """Every value a job sends as a header is printable ASCII (the schema's pattern, checked
    with `fullmatch`: its `$` lets a final newline through): a 400 naming the field, never a
    job whose requests cannot be sent."""
    fields: list[tuple[str, str | None]] = [("api_key", body.api_key)]
    fields.append(("persona_dims", body.persona_dims))
    for i, persona in enumerate(body.personas):
        fields += [
            (f"personas[{i}].{name}", getattr(persona, name))
            for name in WarmPersona.__struct_fields__
        ]
    for param, value in fields:
        if value is not None and not _HEADER_TEXT.fullmatch(value):
            raise InvalidRequest(
                f"`{param}` is sent as a header: printable ASCII, space and tab only.",
                param=param,
            )
