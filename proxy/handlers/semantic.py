"""The pipeline's semantic step (docs/design.md §10): after an exact miss, a stored answer to the
same question in other words, from exactly the same partition; and, after a miss whose answer
was stored, that question indexed for the next paraphrase."""

from __future__ import annotations

from aiohttp import web

from proxy.dispatch.call import StorePlan
from proxy.dispatch.flight import Flight
from proxy.failures import InvalidRequest
from proxy.handlers.freshness import still_valid
from proxy.handlers.hot import Prepared, PreparedEntries
from proxy.handlers.parse import ParsedRequest
from proxy.keys import CacheKey, ScopePart
from proxy.runtime import Runtime
from proxy.semantic.cache import Probe, SemanticCache
from proxy.semantic.match import Candidate
from proxy.tenancy import CREDENTIAL_HEADERS
from proxy.vocabulary import SEMANTIC_WRONG_KEY, CacheMatch

SEMANTIC_HEADER = "X-Cache-Semantic"  # "off": this request is not looked up semantically
THRESHOLD_HEADER = "X-Cache-Semantic-Threshold"  # may raise the threshold, never lower it
_TOOL_CALLS = b'"tool_calls"'
_FUNCTION_CALL = b'"function_call"'  # a Responses output item calling a tool
_TOOL_USE = b'"tool_use"'  # a Messages content block calling a tool


def calls_tools(body: bytes) -> bool:
    return _TOOL_CALLS in body or _FUNCTION_CALL in body or _TOOL_USE in body


async def semantic_lookup(
    request: web.Request,
    runtime: Runtime,
    semantic: SemanticCache,
    prepared: PreparedEntries,
    parsed: ParsedRequest,
    scope: ScopePart,
) -> tuple[Probe | None, Prepared | None]:
    """The request's probe (None when it is not looked up), and the entry to serve, if any."""
    metrics = semantic.metrics
    headers = request.headers
    threshold = _threshold(semantic, headers.get(THRESHOLD_HEADER))
    switch = headers.get(SEMANTIC_HEADER)
    if switch is not None and switch.strip().lower() == "off":
        metrics.lookups.labels("off").inc()
        return None, None
    if switch is not None and switch.strip().lower() != "on":
        raise InvalidRequest(f"{SEMANTIC_HEADER} must be on or off.", param=SEMANTIC_HEADER)
    if not parsed.directives.read:
        return None, None
    credentials = {name: headers[name] for name in CREDENTIAL_HEADERS if name in headers}
    probe = await semantic.probe(
        parsed.identity.tenant, parsed.endpoint, scope, parsed.body, credentials, threshold
    )
    if probe is None:
        metrics.lookups.labels("skipped").inc()
        return None, None
    if probe.chosen is None:
        metrics.lookups.labels("rejected" if probe.rejected else "miss").inc()
        return probe, None
    found = await _read_candidate(runtime, semantic, prepared, parsed, probe.chosen)
    if found is None:
        semantic.forget(probe.chosen.digest)
        metrics.lookups.labels("stale").inc()
        return probe, None
    metrics.lookups.labels("hit").inc()
    metrics.similarity.observe(probe.chosen.similarity)
    return probe, found


def semantic_headers(candidate: Candidate) -> dict[str, str]:
    return {
        "X-Cache-Match": CacheMatch.SEMANTIC.value,
        "X-Cache-Similarity": f"{candidate.similarity:.3f}",
    }


def remember_answer(semantic: SemanticCache, probe: Probe, flight: Flight, plan: StorePlan) -> None:
    """Indexes the question of a miss whose answer the flight stored (answers with tool calls
    only when SEMANTIC_SERVE_TOOL_CALLS is on)."""
    result = flight.result
    if not result.done() or result.cancelled() or result.exception() is not None:
        return
    answer = result.result()
    if not answer.ok or not answer.stored or answer.from_peer:
        return
    if not semantic.serve_tool_calls and calls_tools(answer.body):
        return
    semantic.remember(probe, plan.key.digest, plan.ttl_s)


def _threshold(semantic: SemanticCache, raw: str | None) -> float:
    if raw is None:
        return semantic.threshold
    try:
        value = float(raw.strip()) if raw.isascii() and len(raw) <= 32 else float("nan")
    except ValueError:
        value = float("nan")
    if not semantic.threshold <= value <= 1:  # NaN fails too
        raise InvalidRequest(
            f"{THRESHOLD_HEADER} must be a number from the configured threshold "
            f"({semantic.threshold:g}) to 1: it may only raise it.",
            param=THRESHOLD_HEADER,
        )
    return value


async def _read_candidate(
    runtime: Runtime,
    semantic: SemanticCache,
    prepared: PreparedEntries,
    parsed: ParsedRequest,
    chosen: Candidate,
) -> Prepared | None:
    """The chosen entry, read like an exact one (rules apply) together with its wrong mark;
    None when it is gone, stale, reported wrong, or holds tool calls that may not be served."""
    key = CacheKey(chosen.digest)
    raw, wrong = await runtime.store.get_many([key.entry, SEMANTIC_WRONG_KEY % chosen.digest[:16]])
    found = prepared.get(key, raw) if raw is not None and wrong is None else None
    if found is None or found.entry.meta.tenant != parsed.identity.tenant:
        return None
    if not semantic.serve_tool_calls and calls_tools(found.entry.body):
        return None
    return found if await still_valid(runtime, parsed, found.entry.meta) else None
