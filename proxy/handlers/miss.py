"""A miss's steps, after the pipeline (proxy/handlers/pipeline.py) found no answer to serve
and held the budget: one flight per key, its leader's upstream call (alone, or as its share of
a micro-batch), everyone's answer, then the settling (ledger outcome, token charge, semantic
entry)."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

from aiohttp import web
from multidict import CIMultiDict

from proxy.accounting import Outcome
from proxy.budget import Reservation
from proxy.cache.entry import EntryMeta
from proxy.dispatch.batch_shapes import (
    BATCH_SIZE_HEADER,
    UNBATCHED_FIELDS,
    BatchKind,
    Share,
    batch_key,
)
from proxy.dispatch.call import StorePlan, UpstreamCall, store_answer
from proxy.dispatch.flight import Answer, Flight
from proxy.dispatch.runner import Sender
from proxy.handlers.answers import MISS_HEADERS, cache_headers
from proxy.handlers.costing import count_flight
from proxy.handlers.parse import ParsedRequest, upstream_headers
from proxy.handlers.rate import RateCheck, own_usage, settle_tokens
from proxy.handlers.respond import flight_for, respond
from proxy.handlers.route import Asked, CachedRoute, Known
from proxy.handlers.semantic import remember_answer
from proxy.runtime import Runtime
from proxy.semantic.cache import Probe
from proxy.spans import ANSWER_BODY
from proxy.upstream.exchange import UpstreamRequest
from proxy.upstream.gate import Wanted
from proxy.vocabulary import CacheStatus


async def call_upstream(
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
