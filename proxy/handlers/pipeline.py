"""The steps every understood endpoint with whole answers takes, written once
(docs/design.md §3, §4 and §5):

    parse → key → exact lookup → semantic lookup → budget pre-flight → single-flight
    → upstream call (stored when whole) → answer → ledger outcome

An endpoint is a `CachedRoute` (proxy/handlers/route.py): its name, whether the persona
matters to its answers, and its `WireAdapter`, which reads its request body (`Asked`: model,
TTL kind, stream or not, the one input a micro-batch may share), makes the upstream body,
checks the answer and, when it is batched, shapes one request's share of a merged answer.
Adding an endpoint is writing its adapter and one `CachedRoute`. The steps from the
single-flight on are proxy/handlers/miss.py's. Embeddings, cached per input item, compose the
same steps their own way (proxy/handlers/embeddings.py).
"""

from __future__ import annotations

from aiohttp import web

from proxy.accounting import Outcome
from proxy.body import read_body
from proxy.failures import BudgetExceeded
from proxy.handlers.answers import entry_meta, lookup, serve_stored
from proxy.handlers.costing import count_hit, open_outcome, preflight
from proxy.handlers.downgrade import downgrade_for, with_model
from proxy.handlers.hot import PREPARED, KnownRequests
from proxy.handlers.json_body import refuse_repeated_keys
from proxy.handlers.miss import call_upstream
from proxy.handlers.parse import ParsedRequest, parse_request
from proxy.handlers.rate import (
    RateCheck,
    admit_request,
    admit_tokens,
    charged,
)
from proxy.handlers.route import CachedRoute, Known
from proxy.handlers.semantic import semantic_headers, semantic_lookup
from proxy.limits import RATE_DECISION, Decision
from proxy.runtime import RUNTIME, Runtime
from proxy.spans import ANSWER_BODY
from proxy.vocabulary import CacheMatch

KNOWN = web.AppKey("sidecache_known_requests", KnownRequests[Known])


async def serve_cached(request: web.Request, route: CachedRoute) -> web.StreamResponse:
    runtime = request.app[RUNTIME]
    prepared = request.app[PREPARED]
    known_requests = request.app[KNOWN]
    sent = await read_body(request)  # as sent: a known request is neither checked nor inflated
    known = known_requests.get(route.endpoint, sent, request.raw_headers)
    if known is None:
        known = await _parse(request, runtime, route)
        if known.parsed.directives.read:
            raw = known.parsed.raw
            known_requests.put(route.endpoint, sent, request.raw_headers, known, len(raw))
    parsed, asked, scope, key = known.parsed, known.asked, known.scope, known.key
    outcome = open_outcome(request, parsed, asked.model)
    # Sent before the lookup's GET, so both go to Redis in one write (one round trip).
    limiter = runtime.limiter
    counting = (
        limiter.check_request(parsed.identity.tenant, parsed.user_id) if limiter.active else None
    )
    leased = None  # a lease's decision: allowed, nothing to await; a JSON hit writes it itself
    if isinstance(counting, Decision):
        leased, counting = counting, None
    try:
        if runtime.tracer.on:
            with runtime.tracer.span("sidecache.cache.lookup"):
                found = await lookup(runtime, prepared, parsed, key)
            if found is not None:  # the span's response model (and content), a stream's too
                request[ANSWER_BODY] = found.entry.body
        else:  # the hit path, untraced: not even a no-op context
            found = await lookup(runtime, prepared, parsed, key)
    except BaseException:
        if leased is not None:  # the failure's answer carries the headers too
            request[RATE_DECISION] = leased
        raise
    finally:
        if counting is not None:  # 429 before the stored answer is served or anything is spent
            await admit_request(request, runtime, parsed, counting)
    if found is not None:
        count_hit(runtime, outcome, found)
        return await serve_stored(
            request, found, stream=asked.stream, include_usage=asked.include_usage, rated=leased
        )
    if leased is not None:
        request[RATE_DECISION] = leased
    semantic, probe = runtime.semantic, None
    if semantic is not None and route.semantic:  # after the exact miss, before any spending
        with runtime.tracer.span("sidecache.semantic.lookup"):
            probe, found = await semantic_lookup(
                request, runtime, semantic, prepared, parsed, scope
            )
        if found is not None and probe is not None and probe.chosen is not None:
            count_hit(runtime, outcome, found)
            outcome.match, outcome.similarity = CacheMatch.SEMANTIC, probe.chosen.similarity
            if runtime.tracer.on:
                request[ANSWER_BODY] = found.entry.body
            return await serve_stored(
                request,
                found,
                stream=asked.stream,
                include_usage=asked.include_usage,
                match=semantic_headers(probe.chosen),
            )
    refuse_repeated_keys(parsed.raw, parsed.body)  # the upstream must read what the key read
    rate = charged(runtime, parsed) if counting is not None else None
    if rate is not None:  # before any budget hold, queue slot or upstream call
        await admit_tokens(request, runtime, parsed, rate)
    meta = entry_meta(parsed, asked.model, scope, runtime.invalidations.generation)
    try:
        held = await preflight(runtime, parsed, asked.model)
    except BudgetExceeded:
        cheaper = downgrade_for(runtime, parsed, asked.model)
        if cheaper is None:
            raise
        return await _downgraded(request, runtime, route, known, cheaper, outcome, rate)
    return await call_upstream(request, runtime, route, known, meta, outcome, held, rate, probe)


async def _downgraded(
    request: web.Request,
    runtime: Runtime,
    route: CachedRoute,
    known: Known,
    cheaper: str,
    outcome: Outcome,
    rate: RateCheck | None,
) -> web.StreamResponse:
    """Over budget (docs/design.md §13): the request as if it had asked for `cheaper`, with
    that model's key and price, answered with X-Downgraded-From; the usual 429 when `cheaper`
    does not fit the budget either."""
    served = _known(request, runtime, route, with_model(known.parsed, cheaper))
    parsed, asked = served.parsed, served.asked
    outcome.downgraded_from = known.asked.model
    outcome.model = asked.model  # the ledger records the model that served the request
    meta = entry_meta(parsed, asked.model, served.scope, runtime.invalidations.generation)
    found = await lookup(runtime, request.app[PREPARED], parsed, served.key)
    if found is not None:
        count_hit(runtime, outcome, found)
        runtime.metrics.budget_downgrades.inc()
        return await serve_stored(
            request, found, stream=asked.stream, include_usage=asked.include_usage
        )
    held = await preflight(runtime, parsed, asked.model)
    runtime.metrics.budget_downgrades.inc()
    return await call_upstream(request, runtime, route, served, meta, outcome, held, rate, None)


async def _parse(request: web.Request, runtime: Runtime, route: CachedRoute) -> Known:
    parsed = await parse_request(
        request, runtime, route.endpoint, persona_aware=route.persona_aware
    )
    return _known(request, runtime, route, parsed)


def _known(
    request: web.Request, runtime: Runtime, route: CachedRoute, parsed: ParsedRequest
) -> Known:
    asked = route.adapter.read(parsed)
    keys = runtime.keys
    dims = keys.persona_dims(route.endpoint, asked.model) if route.persona_aware else ()
    scope = keys.scope_part(parsed.directives, parsed.persona, parsed.user_id, dims)
    keyed_as: str = route.endpoint
    if route.key_headers:
        headers = request.headers
        sent = (f"\n{name}:{v}" for name in route.key_headers for v in headers.getall(name, ()))
        keyed_as += "".join(sent)
    key = keys.request_key(parsed.identity.tenant, keyed_as, parsed.body, scope)
    return Known(parsed, asked, scope, key)
