"""The OpenAPI 3.1 document of the admin JSON API, generated from the msgspec Structs that
validate its parameters and shape its answers. Served without a token at
`/api/admin/openapi.json`: it describes routes, never data."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec

from admin import cache_models as c
from admin import models as m
from admin import rate_limits as r
from admin.report.model import Report
from admin.report.route import HTML, MARKDOWN, REPORT_PATH, ReportParams
from admin.schema_rules import tighten
from proxy.errors import ErrorBody
from proxy.settings import PersonaSettings
from proxy.upstream.breakers import FAMILIES

PREFIX = "/api/admin/dashboard"
# path -> (method, summary, query params struct, body struct, answer struct)
ROUTES: list[tuple[str, str, str, type | None, type | None, type]] = [
    ("/overview", "get", "Totals and rates over a window", m.WindowParams, None, m.Overview),
    ("/costs", "get", "Cost and savings over time", m.CostsParams, None, m.Costs),
    ("/performance", "get", "Latency, upstream errors, slow analytics queries",
     m.PerformanceParams, None, m.Performance),
    ("/users", "get", "Top users by cost and requests", m.UsersParams, None, m.Users),
    ("/cache", "get", "Hit rates, entries, memory and savings", m.WindowParams, None,
     m.CacheStats),
    ("/circuits", "get", "Every circuit breaker", None, None, m.Circuits),
    ("/circuits/reset", "post", "Close one breaker or all (audited)", None, m.ResetBody,
     m.ResetAnswer),
    ("/upstreams", "get", "Each upstream's health and share of answers; retries and fallbacks",
     None, None, m.Upstreams),
    ("/cache/invalidate", "post", "Invalidate entries by selectors, on every replica (audited)",
     None, c.InvalidateBody, c.Invalidated),
    ("/cache/feedback", "post", "Report a semantic hit wrong: never served semantically again "
     "(audited)", None, c.FeedbackBody, c.Feedback),
    ("/cache/warm", "post", "Start a warming job at low priority (audited)", None, c.WarmBody,
     c.WarmJob),
    ("/cache/warm", "get", "The warming jobs of this replica", None, None, c.WarmJobs),
    ("/cache/warm/{job}", "get", "One warming job's progress", None, None, c.WarmJob),
    ("/rate-limits", "get", "Rate limits, overrides and each tenant's current use", None, None,
     r.RateLimits),
    ("/rate-limits", "put", "Set a tenant's or user's rate limits, on every replica (audited)",
     None, r.RateLimitBody, r.RateLimitSaved),
    ("/rate-limits", "delete", "Remove a tenant's or user's rate-limit override (audited)",
     None, r.RateLimitTarget, r.RateLimitDeleted),
    (REPORT_PATH, "get", "The optimisation report over a window (docs/design.md §14)",
     ReportParams, None, Report),
]  # fmt: skip
_CREATED = {("/cache/warm", "post")}  # answered 202: the job runs on after the answer
_ERRORS = {
    "400": "A parameter is invalid (`error.param` names it)",
    "401": "Missing or invalid admin token",
    "403": "X-Admin-User is not in ADMIN_USER_IDS",
    "404": "No such route, or no such warming job on this replica",
    "503": "The ledger database (or, to invalidate or set rate limits, Redis) cannot answer",
}
# Answers in other forms besides JSON, chosen by a query parameter (the report's `format`).
_TEXT = {"schema": {"type": "string"}}
_OTHER_FORMS = {(REPORT_PATH, "get"): {MARKDOWN: _TEXT, HTML: _TEXT}}
_MORE_ERRORS = {  # what only some operations answer
    ("/cache/feedback", "post"): {"409": "The semantic cache is off (`semantic_cache_off`)"},
}


def full_path(path: str) -> str:
    """A ROUTES path as served: under PREFIX unless it names its own (`/api/...`)."""
    return path if path.startswith("/api/") else PREFIX + path


def _query_parameters(kind: type, schemas: dict[str, Any]) -> list[dict[str, Any]]:
    schema = schemas[kind.__name__]
    return [
        {"name": name, "in": "query", "required": False, "schema": prop}
        for name, prop in schema["properties"].items()
    ]


def openapi_document(
    persona: PersonaSettings | None = None, breakers: Sequence[str] = FAMILIES
) -> dict[str, Any]:
    """The document for a sidecar whose persona values are `persona` (the defaults if None)
    and whose breakers are named `breakers` (one set per configured upstream)."""
    kinds: list[type] = [ErrorBody]
    for _, _, _, query, body, answer in ROUTES:
        kinds += [k for k in (query, body, answer) if k is not None]
    _, schemas = msgspec.json.schema_components(kinds, ref_template="#/components/schemas/{name}")
    tighten(schemas, persona or PersonaSettings())
    schemas["ResetBody"]["properties"]["breaker"] = {
        "anyOf": [{"type": "string", "enum": list(breakers)}, {"type": "null"}],
        "default": None,
    }
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
    paths: dict[str, Any] = {}
    for path, method, summary, query, body, answer in ROUTES:
        full = full_path(path)
        op: dict[str, Any] = {
            "summary": summary,
            "operationId": full.replace("/api/admin/", "").replace("/", "_"),
            "parameters": (_query_parameters(query, schemas) if query else []) + (
                [{"name": "job", "in": "path", "required": True, "schema": {"type": "string"}}]
                if "{job}" in path else []),
            "responses": {
                "202" if (path, method) in _CREATED else "200": {
                    "description": "OK",
                    "content": {"application/json": {
                        "schema": {"$ref": f"#/components/schemas/{answer.__name__}"}},
                        **_OTHER_FORMS.get((path, method), {})},
                },
                **{code: {"description": text, "content": error} for code, text in
                   {**_ERRORS, **_MORE_ERRORS.get((path, method), {})}.items()},
            },
        }  # fmt: skip
        if body is not None:
            op["requestBody"] = {
                "required": any(f.required for f in msgspec.structs.fields(body)),
                "content": {"application/json": {
                    "schema": {"$ref": f"#/components/schemas/{body.__name__}"}}},
            }  # fmt: skip
        paths.setdefault(full, {})[method] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "Sidecache admin API", "version": "1"},
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
        "paths": paths,
    }
