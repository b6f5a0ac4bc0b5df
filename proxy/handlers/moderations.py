"""`/v1/moderations`: whole answers cached per tenant (persona never matters to a verdict).

A miss is a single-flight (identical concurrent requests share it, marked COALESCED). When the
request holds one text, its flight's upstream call is micro-batched
(proxy/dispatch/batcher.py): texts from other requests of the same model and upstream account
that arrive within `AI_BATCH_WAIT_MS` go up in the same call, each request is answered with its
own result (and `X-Batch-Size: N`), and stored under its own key exactly as an unbatched answer
is. A list of texts, or of multi-modal parts, makes one upstream call of its own.
"""

from __future__ import annotations

import logging
from typing import Any

import msgspec
from aiohttp import web
from multidict import CIMultiDict

from proxy.cache.entry import encode_entry
from proxy.dispatch.batch_shapes import (
    BATCH_SIZE_HEADER,
    UNBATCHED_FIELDS,
    BatchKey,
    BatchKind,
    Share,
    Split,
    batch_key,
)
from proxy.dispatch.call import StorePlan, UpstreamCall, stored_response, validator
from proxy.dispatch.flight import Answer, Flight
from proxy.dispatch.fly import launch
from proxy.handlers.answers import lookup, serve_stored
from proxy.handlers.common import (
    COALESCED,
    Understood,
    entry_meta,
    miss_status,
    understand,
    upstream_headers,
    view,
)
from proxy.handlers.costing import count_flight, count_hit, open_outcome, preflight
from proxy.handlers.flights import flight_for, respond
from proxy.runtime import RUNTIME, Runtime
from proxy.ttl import Kind
from proxy.wire import ModerationAnswer, ModerationRequest, Usage

ENDPOINT = "moderations"
log = logging.getLogger("sidecache.moderations")
_validate = validator(ModerationAnswer)
_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode


async def moderations(request: web.Request) -> web.StreamResponse:
    runtime = request.app[RUNTIME]
    u = await understand(request, runtime, ENDPOINT, persona_aware=False)
    req = view(ModerationRequest, u.body)
    scope = runtime.keys.scope_part(u.directives, u.persona, u.user_id, ())
    key = runtime.keys.request_key(u.identity.tenant, ENDPOINT, u.body, scope)
    model = req.model or "omni-moderation-latest"
    outcome = open_outcome(request, u, model)
    entry = await lookup(runtime, u, key)
    if entry is not None:
        count_hit(runtime, outcome, entry)
        return await serve_stored(request, entry, key)
    meta = entry_meta(u, req.model or "", scope, runtime.invalidations.generation)
    await preflight(runtime, u, model)
    plan = None
    if u.directives.write:
        ttl = runtime.ttl.seconds(Kind.MODERATIONS, 0.0, u.directives.max_age)
        plan = StorePlan(key, ttl, meta)
    flight, leader = flight_for(runtime, u, key)
    if leader:
        call = UpstreamCall(
            endpoint=ENDPOINT,
            path=request.path,
            headers=upstream_headers(request, u),
            body=u.raw,
            priority=u.priority,
            validate=_validate,
            plan=plan,
            coalesce=u.directives.read,
        )
        text = _single_text(req.input)
        launch(runtime, flight, call, _BatchedSend(request, u, text) if text is not None else None)
    response = await respond(request, flight, key, miss_status(u) if leader else COALESCED)
    await count_flight(runtime, outcome, u, flight, leader)
    return response


def _single_text(value: str | list[Any]) -> str | None:
    if isinstance(value, str):
        return value
    if len(value) == 1 and isinstance(value[0], str):
        return value[0]
    return None


class _BatchedSend:
    """A flight's upstream call made as a share of a micro-batch (the batcher gates it)."""

    def __init__(self, request: web.Request, u: Understood, text: str) -> None:
        self.text = text
        self.params = {k: v for k, v in u.body.items() if k not in UNBATCHED_FIELDS}
        self.key: BatchKey = batch_key(
            ENDPOINT,
            request.path,
            self.params,
            u.identity.upstream_authorization,
            upstream_headers(request, u),
        )

    async def __call__(self, runtime: Runtime, flight: Flight, call: UpstreamCall) -> Answer:
        outcome = await runtime.batcher.submit(
            self.key,
            BATCHED,
            self.text,
            params=self.params,
            headers=call.headers,
            priority=call.priority,
            wanted=flight.wanted,
        )
        if isinstance(outcome, Share):
            return await self._answer(runtime, call.plan, outcome)
        return outcome

    async def _answer(self, runtime: Runtime, plan: StorePlan | None, share: Share) -> Answer:
        """This request's answer, shaped as if it had been asked alone, and stored as such."""
        answer: dict[str, Any] = {**share.rest, "results": [share.part]}
        if share.has_usage:
            answer["usage"] = {"prompt_tokens": share.tokens, "total_tokens": share.tokens}
        body = _encode(answer)
        headers = CIMultiDict(share.headers)
        headers[BATCH_SIZE_HEADER] = str(share.requests)
        usage = Usage(prompt_tokens=share.item_tokens, total_tokens=share.item_tokens)
        stored = False
        if plan is not None:
            entry = stored_response(body, plan.meta, usage)
            await runtime.store.put(plan.key.entry, encode_entry(entry), plan.ttl_s)
            stored = True
        return Answer(200, headers, body, stored=stored, usage=usage)


def split_answer(payload: bytes, count: int) -> Split:
    """A moderation answer for `count` texts: one result per text, in order."""
    try:
        answer = _decode(payload)
    except msgspec.DecodeError as exc:
        raise ValueError(f"an unreadable moderation answer ({exc})") from None
    results = answer.get("results") if isinstance(answer, dict) else None
    if not isinstance(results, list) or len(results) != count:
        found = len(results) if isinstance(results, list) else "no"
        raise ValueError(f"{found} moderation results for {count} inputs")
    usage = answer.get("usage")
    tokens = usage.get("prompt_tokens") if isinstance(usage, dict) else None
    rest = {k: v for k, v in answer.items() if k not in ("results", "usage")}
    return Split(results, rest, tokens if isinstance(tokens, int) else None)


BATCHED = BatchKind(endpoint=ENDPOINT, split=split_answer)
