"""The steps every understood endpoint with whole answers takes, written once
(docs/design.md §3, §4 and §5):

    parse → key → exact lookup → semantic lookup → budget pre-flight → single-flight
    → upstream call (stored when whole) → answer → ledger outcome

An endpoint is a `CachedRoute`: its name, whether the persona matters to its answers, and its
`WireAdapter`, which reads its request body (`Asked`: model, TTL kind, stream or not, the one
input a micro-batch may share), makes the upstream body, checks the answer and, when it is
batched, shapes one request's share of a merged answer. Adding an endpoint is writing its
adapter and one `CachedRoute`. Embeddings, cached per input item, compose the same steps their
own way (proxy/handlers/embeddings.py).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Protocol

import msgspec
from aiohttp import web
from multidict import CIMultiDict

from proxy.accounting import Outcome
from proxy.body import read_body
from proxy.budget import Reservation
from proxy.cache.entry import EntryMeta
from proxy.dispatch.batch_shapes import (
    BATCH_SIZE_HEADER,
    UNBATCHED_FIELDS,
    BatchKind,
    Share,
    batch_key,
)
from proxy.dispatch.call import StorePlan, UpstreamCall, Validator, store_answer
from proxy.dispatch.flight import Answer, Flight
from proxy.dispatch.runner import Sender
from proxy.failures import BudgetExceeded
from proxy.handlers.answers import MISS_HEADERS, cache_headers, entry_meta, lookup, serve_stored
from proxy.handlers.costing import count_flight, count_hit, open_outcome, preflight
from proxy.handlers.downgrade import DOWNGRADED_FROM, with_model
from proxy.handlers.hot import PREPARED, KnownRequests
from proxy.handlers.json_body import refuse_repeated_keys
from proxy.handlers.parse import ParsedRequest, parse_request, upstream_headers
from proxy.handlers.rate import (
    RateCheck,
    admit,
    admit_request,
    admit_tokens,
    open_rate,
    own_usage,
    settle_tokens,
)
from proxy.handlers.respond import flight_for, respond
from proxy.handlers.semantic import remember_answer, semantic_headers, semantic_lookup
from proxy.keys import CacheKey, ScopePart
from proxy.limits import Decision
from proxy.runtime import RUNTIME, Runtime
from proxy.semantic.cache import Probe
from proxy.spans import ANSWER_BODY
from proxy.ttl import Kind
from proxy.upstream.exchange import UpstreamRequest
from proxy.upstream.gate import Wanted
from proxy.vocabulary import CacheMatch, CacheStatus, Endpoint
from proxy.wire import Usage


class Asked(msgspec.Struct, frozen=True):
    """What the pipeline needs of one request's body, read by its endpoint's adapter (a Struct:
    made on every request, hits included, and a frozen dataclass costs ten times as much)."""

    model: str  # priced, recorded in the ledger and in the entry (invalidation by model)
    ttl_kind: Kind
    stream: bool = False
    include_usage: bool = False  # the client asked for the usage chunk of a stream
    batch_item: Any | None = None  # the one input a micro-batch may share a call for


@dataclass(frozen=True, slots=True)
class Batching:
    """How a micro-batched endpoint merges calls (`kind`) and makes one request's answer of its
    share of a merged one, as if it had been asked alone (`answer`)."""

    kind: BatchKind
    answer: Callable[[Share], tuple[bytes, Usage]]


class WireAdapter(Protocol):
    """How one endpoint's wire format is read, sent upstream and checked."""

    @property
    def validate(self) -> Validator:
        """An answer's usage when it is whole, None when it must not be stored."""

    @property
    def stream_kind(self) -> str:
        """How a streamed answer is assembled (proxy/cache/replay.py); "" if never streamed."""

    @property
    def batching(self) -> Batching | None:
        """For an endpoint whose single-input requests are micro-batched."""

    def read(self, parsed: ParsedRequest) -> Asked: ...

    def upstream_body(self, parsed: ParsedRequest, asked: Asked) -> bytes: ...


@dataclass(frozen=True, slots=True)
class CachedRoute:
    endpoint: Endpoint
    adapter: WireAdapter
    persona_aware: bool
    semantic: bool = False  # whether its last user message may match semantically
    # Request headers that change the answer, so their values are part of the key (Messages'
    # `anthropic-beta`); a separate part of the key, never confused with a body field.
    key_headers: tuple[str, ...] = ()


class Known(msgspec.Struct, frozen=True):
    """What parsing a request found, kept for the next request with the very same bytes
    (proxy/handlers/hot.py): shared between requests, never mutated."""

    parsed: ParsedRequest
    asked: Asked
    scope: ScopePart
    key: CacheKey


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
    rate = open_rate(runtime, parsed) if runtime.limiter.active else None
    try:
        if runtime.tracer.on:
            with runtime.tracer.span("sidecache.cache.lookup"):
                found = await lookup(runtime, prepared, parsed, key)
            if found is not None:  # the span's response model (and content), a stream's too
                request[ANSWER_BODY] = found.entry.body
        else:  # the hit path, untraced: not even a no-op context
            found = await lookup(runtime, prepared, parsed, key)
    finally:
        if rate is not None:  # 429 before the stored answer is served or anything is spent
            if isinstance(rate.pending, Decision):  # decided from a lease: nothing to await
                admit(request, runtime.limiter, rate, rate.pending)
            else:
                await admit_request(request, runtime.limiter, rate)
    if found is not None:
        count_hit(runtime, outcome, found)
        return await serve_stored(
            request, found, stream=asked.stream, include_usage=asked.include_usage
        )
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
    if rate is not None:  # before any budget hold, queue slot or upstream call
        await admit_tokens(request, runtime, parsed, rate)
    meta = entry_meta(parsed, asked.model, scope, runtime.invalidations.generation)
    try:
        held = await preflight(runtime, parsed, asked.model)
    except BudgetExceeded:
        cheaper = runtime.settings.budget.downgrade_for(asked.model)
        if cheaper is None:
            raise
        return await _downgraded(request, runtime, route, known, cheaper, outcome, rate)
    return await _call(request, runtime, route, known, meta, outcome, held, rate, probe)


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
    request[DOWNGRADED_FROM] = known.asked.model
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
    return await _call(request, runtime, route, served, meta, outcome, held, rate, None)


async def _call(
    request: web.Request,
    runtime: Runtime,
    route: CachedRoute,
    known: Known,
    meta: EntryMeta,
    outcome: Outcome,
    held: Reservation | None,
    rate: RateCheck | None,
    probe: Probe | None,
) -> web.StreamResponse:
    """The miss: one flight per key, its leader's upstream call, everyone's answer."""
    parsed, asked, key = known.parsed, known.asked, known.key
    plan = None
    if parsed.directives.write:
        ttl = runtime.ttl.seconds(asked.ttl_kind, parsed.persona.score, parsed.directives.max_age)
        plan = StorePlan(key, ttl, meta)
    flight, leader = flight_for(runtime, parsed, key)
    label = parsed.miss_status if leader else CacheStatus.COALESCED
    request[MISS_HEADERS] = cache_headers(label, key)
    if leader:
        call = UpstreamCall(
            request=UpstreamRequest(
                endpoint=route.endpoint,
                path=request.path,
                headers=upstream_headers(request, parsed),
                body=route.adapter.upstream_body(parsed, asked),
                priority=parsed.priority,
                tenant=parsed.identity.tenant,
                model=asked.model,
            ),
            validate=route.adapter.validate,
            plan=plan,
            stream=asked.stream,
            kind=route.adapter.stream_kind,
            coalesce=parsed.directives.read,
        )
        runtime.runner.launch(flight, call, _batched_sender(runtime, route, parsed, asked))
    try:
        # A follower's wait for the leader's call (its answer, or its stream to the end).
        with runtime.tracer.span("sidecache.flight_wait") if not leader else nullcontext():
            return await respond(
                request, flight, key, label, stream=asked.stream, include_usage=asked.include_usage
            )
    finally:  # a failed answer settles too: its hold is released, never left to lapse
        await count_flight(runtime, outcome, parsed, flight, leader, held)
        if runtime.tracer.on:
            _keep_answer(request, flight)
        if rate is not None:
            await settle_tokens(runtime, rate, own_usage(flight, leader))
        semantic = runtime.semantic
        if probe is not None and semantic is not None and leader and plan is not None:
            remember_answer(semantic, probe, flight, plan)


def _keep_answer(request: web.Request, flight: Flight) -> None:
    """The flight's answer for the server span (a stream's as assembled for storing)."""
    result = flight.result
    if result.done() and not result.cancelled():
        answer = result.result()
        if answer.ok:
            request[ANSWER_BODY] = answer.body


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


def _batched_sender(
    runtime: Runtime, route: CachedRoute, parsed: ParsedRequest, asked: Asked
) -> Sender | None:
    """A flight's upstream call made as a share of a micro-batch, when the endpoint is batched
    and the request holds one input; None for the flight's own call."""
    batching = route.adapter.batching
    if batching is None or asked.batch_item is None:
        return None

    async def send(flight: Flight, call: UpstreamCall) -> Answer:
        headers = CIMultiDict(call.request.headers)
        outcome = await submit_share(
            runtime, batching.kind, parsed, headers, asked.batch_item, flight.wanted
        )
        if not isinstance(outcome, Share):
            return outcome  # the upstream's error answer, as it is
        body, usage = batching.answer(outcome)
        relayed = CIMultiDict(outcome.headers)
        relayed[BATCH_SIZE_HEADER] = str(outcome.requests)
        stored = await store_answer(runtime.store, call, body, usage)
        return Answer(200, relayed, body, stored=stored, usage=usage)

    return send


async def submit_share(
    runtime: Runtime,
    kind: BatchKind,
    parsed: ParsedRequest,
    headers: CIMultiDict[str],
    item: Any,
    wanted: Wanted,
) -> Share | Answer:
    """`item`'s share of a micro-batch of requests that differ only in their input (raises the
    batch's Failure)."""
    params = {k: v for k, v in parsed.body.items() if k not in UNBATCHED_FIELDS}
    path = parsed.endpoint.path
    account = parsed.identity.account  # every credential, not Authorization alone
    key = batch_key(parsed.endpoint, path, params, account, headers)
    return await runtime.batcher.submit(
        key, kind, item, params=params, headers=headers, priority=parsed.priority, wanted=wanted
    )
