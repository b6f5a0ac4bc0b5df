"""`/v1/moderations`: whole answers cached per tenant (persona never matters to a verdict).

A miss is a single-flight (identical concurrent requests share it, marked COALESCED). When the
request holds one text, its flight's upstream call is micro-batched
(proxy/dispatch/batcher.py): texts from other requests of the same model and upstream account
that arrive within `AI_BATCH_WAIT_MS` go up in the same call, each request is answered with its
own result (and `X-Batch-Size: N`), and stored under its own key exactly as an unbatched answer
is. A list of texts, or of multi-modal parts, makes one upstream call of its own.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import msgspec
from aiohttp import web
from multidict import CIMultiDict

from proxy.cache.entry import decode_response, encode_entry
from proxy.dispatch.batch_shapes import (
    BATCH_SIZE_HEADER,
    UNBATCHED_FIELDS,
    BatchKey,
    BatchKind,
    Share,
    Split,
    batch_key,
    error_answer,
)
from proxy.dispatch.call import StorePlan, UpstreamCall, stored_response, validator
from proxy.dispatch.flight import Answer, Flight
from proxy.dispatch.fly import launch
from proxy.errors import ApiError
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
    entry = await lookup(runtime, u, key)
    if entry is not None:
        return await serve_stored(request, entry, key)
    plan = None
    if u.directives.write:
        ttl = runtime.ttl.seconds(Kind.MODERATIONS, 0.0, u.directives.max_age)
        plan = StorePlan(key, ttl, entry_meta(u, req.model or "", scope))
    flight, leader = flight_for(runtime, u, key)
    if leader:
        text = _single_text(req.input)
        if text is not None:
            job = _Batched(request, u, text, plan)
            flight.task = asyncio.create_task(job.fly(runtime, flight), name=f"flight-{key.digest}")
        else:
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
            launch(runtime, flight, call)
    return await respond(request, flight, key, miss_status(u) if leader else COALESCED)


def _single_text(value: str | list[Any]) -> str | None:
    if isinstance(value, str):
        return value
    if len(value) == 1 and isinstance(value[0], str):
        return value[0]
    return None


class _Batched:
    """The task behind a flight whose upstream call is a share of a micro-batch."""

    def __init__(self, request: web.Request, u: Understood, text: str, plan: StorePlan | None):
        self.text = text
        self.plan = plan
        self.coalesce = u.directives.read
        self.priority = u.priority
        self.params = {k: v for k, v in u.body.items() if k not in UNBATCHED_FIELDS}
        self.headers = upstream_headers(request, u)
        self.key: BatchKey = batch_key(
            ENDPOINT, request.path, self.params, u.identity.upstream_authorization, self.headers
        )

    async def fly(self, runtime: Runtime, flight: Flight) -> None:
        try:
            answer = await self._coordinated(runtime, flight)
        except ApiError as exc:
            answer = error_answer(exc)
        except Exception:
            log.exception("a batched moderation flight failed unexpectedly")
            answer = error_answer(ApiError(502, "The sidecar failed calling the upstream."))
        finally:
            runtime.flights.land(flight)
        flight.finish(answer)

    async def _coordinated(self, runtime: Runtime, flight: Flight) -> Answer:
        """As for any flight: with peers (Redis), one replica calls upstream for a key and the
        others read the entry it stores."""
        peers, plan, lease = runtime.peers, self.plan, None
        if peers is not None and self.coalesce and plan is not None:
            lease = await peers.try_lead(plan.key)
            if lease is None:
                raw = await peers.await_peer(plan.key)
                entry = decode_response(raw) if raw is not None else None
                if entry is not None:
                    headers = CIMultiDict({"Content-Type": "application/json"})
                    return Answer(200, headers, entry.body, from_peer=True)
                lease = await peers.try_lead(plan.key)
        try:
            outcome = await runtime.batcher.submit(
                self.key,
                BATCHED,
                self.text,
                params=self.params,
                headers=self.headers,
                priority=self.priority,
                wanted=flight.wanted,
            )
            if isinstance(outcome, Share):
                return await self._answer(runtime, outcome)
            return outcome
        finally:
            if lease is not None and peers is not None:
                await peers.release(lease)

    async def _answer(self, runtime: Runtime, share: Share) -> Answer:
        """This request's answer, shaped as if it had been asked alone, and stored as such."""
        answer: dict[str, Any] = {**share.rest, "results": [share.part]}
        if share.has_usage:
            answer["usage"] = {"prompt_tokens": share.tokens, "total_tokens": share.tokens}
        body = _encode(answer)
        headers = CIMultiDict(share.headers)
        headers[BATCH_SIZE_HEADER] = str(share.requests)
        stored = False
        if self.plan is not None:
            usage = Usage(prompt_tokens=share.item_tokens, total_tokens=share.item_tokens)
            entry = stored_response(body, self.plan.meta, usage)
            await runtime.store.put(self.plan.key.entry, encode_entry(entry), self.plan.ttl_s)
            stored = True
        return Answer(200, headers, body, stored=stored)


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
