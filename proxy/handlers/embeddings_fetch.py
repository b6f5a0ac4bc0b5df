"""The upstream side of `/v1/embeddings`: fetching the items the cache did not hold, charging
and storing them (docs/design.md §3).

The missing inputs of a multi-input request go upstream in one call of their own; the one input
of a single-input request goes through the micro-batcher (proxy/dispatch/batcher.py), so it may
share a call with others of the same model, parameters and upstream account. Either way they go
as base64, each fetched item keeps its share of the call's tokens, and the upstream's answer is
checked and cut into float32 vectors in input order here (`split_answer`, the batcher's too).
"""

from __future__ import annotations

import binascii
import time
from dataclasses import dataclass
from typing import Any

import msgspec
from aiohttp import web
from multidict import CIMultiDict

from proxy.accounting import Outcome
from proxy.cache.entry import EntryMeta, StoredVector, encode_entry
from proxy.dispatch.batch_shapes import BatchKind, Share, Split
from proxy.failures import BadUpstreamAnswer
from proxy.handlers.answers import entry_meta
from proxy.handlers.costing import preflight
from proxy.handlers.embeddings_items import MAX_INPUTS, ItemKeys
from proxy.handlers.miss import submit_share
from proxy.handlers.parse import ParsedRequest, client_connected, upstream_headers
from proxy.runtime import Runtime
from proxy.ttl import Kind
from proxy.upstream.exchange import UpstreamRequest
from proxy.upstream.headers import UPSTREAM_HEADER
from proxy.vectors import apportion, from_wire
from proxy.vocabulary import Endpoint
from proxy.wire import EmbeddingAnswer

MAX_CALL_TOKENS = 300_000  # the upstream's limit on one call's inputs together
_encode = msgspec.json.Encoder().encode
_decode_answer = msgspec.json.Decoder(EmbeddingAnswer).decode


@dataclass(frozen=True, slots=True)
class Fetched:
    model: str
    spent: int  # the prompt tokens this request is charged
    parts: list[tuple[bytes, int]]  # per missing item: its float32 vector and its tokens
    relayed: CIMultiDict[str]  # the upstream's headers fit for the client
    shared: int = 0  # how many requests shared the call (0: not batched)

    def vectors(self, meta: EntryMeta) -> list[StoredVector]:
        now = time.time()
        return [StoredVector(vector, tokens, now, meta) for vector, tokens in self.parts]


async def fill_missing(
    request: web.Request,
    runtime: Runtime,
    parsed: ParsedRequest,
    outcome: Outcome,
    model: str,
    keys: ItemKeys,
    items: list[Any],
    found: list[StoredVector | None],
) -> Fetched | web.Response:
    """Fetches the items not `found` into it, charges them and stores them; or the upstream's
    error answer."""
    missing = [i for i, vector in enumerate(found) if vector is None]
    meta = entry_meta(parsed, model, keys.scope, runtime.invalidations.generation)
    held = await preflight(runtime, parsed, model)
    if len(items) == 1:
        fetched = await _fetch_batched(request, runtime, parsed, items[0])
    else:
        fetched = await _fetch(request, runtime, parsed, [items[i] for i in missing])
    if isinstance(fetched, web.Response):  # the upstream's error answer: release the hold
        await runtime.budgets.settle(parsed.identity.tenant, parsed.user_id, 0.0, held)
        return fetched
    outcome.upstream = fetched.relayed.get(UPSTREAM_HEADER)  # the ledger's (migration 006)
    cost = outcome.paid(runtime.prices, fetched.spent, 0, 0)
    await runtime.budgets.settle(parsed.identity.tenant, parsed.user_id, cost, held)
    new = fetched.vectors(meta)
    for i, vector in zip(missing, new, strict=True):
        found[i] = vector
    if parsed.directives.write:
        ttl = runtime.ttl.seconds(Kind.EMBEDDINGS, 0.0, parsed.directives.max_age)
        stored = [(keys.items[i], encode_entry(v), ttl) for i, v in zip(missing, new, strict=True)]
        await runtime.store.put_many(stored)
    return fetched


async def _fetch(
    request: web.Request, runtime: Runtime, parsed: ParsedRequest, inputs: list[Any]
) -> Fetched | web.Response:
    """The inputs of a multi-input request, in one upstream call of their own."""
    body = {**parsed.body, "input": inputs, "encoding_format": "base64"}
    call = UpstreamRequest(
        endpoint=Endpoint.EMBEDDINGS,
        path=request.path,
        headers=upstream_headers(request, parsed),
        body=_encode(body),
        priority=parsed.priority,
        tenant=parsed.identity.tenant,
        model=model if isinstance(model := parsed.body.get("model"), str) else None,
    )
    reply = await runtime.upstream.call(call, lambda: client_connected(request))
    if reply.status != 200:
        return web.Response(status=reply.status, body=reply.body, headers=reply.headers)
    try:
        split = split_answer(reply.body, len(inputs))
    except ValueError as exc:
        raise BadUpstreamAnswer(f"The upstream API sent {exc}.") from None
    spent = split.prompt_tokens or 0
    shares = apportion(spent, [len(item) for item in inputs])
    parts = list(zip(split.parts, shares, strict=True))
    return Fetched(split.rest["model"], spent, parts, reply.headers)


async def _fetch_batched(
    request: web.Request, runtime: Runtime, parsed: ParsedRequest, item: Any
) -> Fetched | web.Response:
    """The one input of a single-input request, in a call it may share (micro-batching)."""
    headers = upstream_headers(request, parsed)
    share = await submit_share(
        runtime, BATCHED, parsed, headers, item, lambda: client_connected(request)
    )
    if not isinstance(share, Share):
        return web.Response(status=share.status, body=share.body, headers=share.headers)
    parts = [(share.part, share.item_tokens)]
    return Fetched(share.rest["model"], share.tokens, parts, share.headers, share.requests)


def split_answer(payload: bytes, count: int) -> Split:
    """An embeddings answer for `count` inputs as float32 vectors in input order."""
    try:
        answer = _decode_answer(payload)
    except msgspec.DecodeError as exc:
        raise ValueError(f"an unreadable embeddings answer ({exc})") from None
    by_index = {item.index: item.embedding for item in answer.data}
    if len(answer.data) != count or sorted(by_index) != list(range(count)):
        raise ValueError(f"{len(answer.data)} embeddings for {count} inputs")
    try:
        vectors = [from_wire(by_index[n]) for n in range(count)]
    except (binascii.Error, ValueError, TypeError) as exc:
        raise ValueError(f"an embedding that is not float32 data ({exc})") from None
    tokens = answer.usage.prompt_tokens if answer.usage else None
    return Split(vectors, {"model": answer.model}, tokens)


BATCHED = BatchKind(
    endpoint=Endpoint.EMBEDDINGS,
    split=split_answer,
    max_inputs=MAX_INPUTS,
    max_tokens=MAX_CALL_TOKENS,
    extra={"encoding_format": "base64"},
)
