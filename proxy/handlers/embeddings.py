"""`/v1/embeddings`, cached per input item (docs/design.md §3).

A request of 100 inputs of which 70 are cached sends only the 30 others upstream, always as
base64, and answers in the original order in the requested `encoding_format`. Each stored item
keeps its share of its call's tokens, so a later hit knows what it saved and what it counts:
the answer's `usage` is the tokens of its inputs as the upstream counted them, a cached input's
as stored, a fetched one's as just charged (README: one `usage` convention on every endpoint's
hits), so a hit answers the `usage` its miss did. What the request cost is the ledger's.

A single-input request whose input is not cached is micro-batched (proxy/dispatch/batcher.py):
it may share one upstream call with others of the same model, parameters and upstream account;
its `usage` is then its own part of that call's, and the answer says `X-Batch-Size: N`.
A multi-input request makes one upstream call of its own.

The steps are the pipeline's (proxy/handlers/pipeline.py), per item: parse, keys, lookup,
budget pre-flight, upstream call, store, answer, ledger outcome.
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
from proxy.cache.entry import EntryMeta, StoredVector, decode_vector, encode_entry
from proxy.dispatch.batch_shapes import BATCH_SIZE_HEADER, BatchKind, Share, Split
from proxy.failures import BadUpstreamAnswer, InvalidRequest
from proxy.handlers.answers import MISS_HEADERS, cache_headers, entry_meta
from proxy.handlers.costing import open_outcome, preflight
from proxy.handlers.freshness import still_valid
from proxy.handlers.json_body import refuse_repeated_keys
from proxy.handlers.miss import submit_share
from proxy.handlers.parse import (
    ParsedRequest,
    client_connected,
    parse_request,
    upstream_headers,
    view,
)
from proxy.handlers.rate import admit_request, admit_tokens, open_rate, settle_tokens
from proxy.keys import NON_SEMANTIC_FIELDS, CacheKey, ScopePart
from proxy.runtime import RUNTIME, Runtime
from proxy.ttl import Kind
from proxy.upstream.exchange import UpstreamRequest
from proxy.upstream.headers import UPSTREAM_HEADER, client_response_headers
from proxy.vectors import apportion, from_wire, to_wire
from proxy.vocabulary import CacheStatus, Endpoint
from proxy.wire import EmbeddingAnswer, EmbeddingRequest

ENDPOINT = Endpoint.EMBEDDINGS
MAX_INPUTS = 2048
MAX_CALL_TOKENS = 300_000  # the upstream's limit on one call's inputs together
_encode = msgspec.json.Encoder().encode
_decode_answer = msgspec.json.Decoder(EmbeddingAnswer).decode
_NOT_KEYED = NON_SEMANTIC_FIELDS | {"input", "encoding_format"}


async def embeddings(request: web.Request) -> web.StreamResponse:
    runtime = request.app[RUNTIME]
    parsed = await parse_request(request, runtime, ENDPOINT, persona_aware=False)
    req = view(EmbeddingRequest, parsed.body)
    items = input_items(req.input)
    keys = _Keys.of(runtime, parsed, items)
    rate = open_rate(runtime, parsed) if runtime.limiter.active else None
    try:
        found = await _lookup(runtime, parsed, keys)
    finally:
        if rate is not None:  # every request counts, whatever it found (docs/design.md §13)
            await admit_request(request, runtime.limiter, rate)
    missing = [i for i, vector in enumerate(found) if vector is None]
    outcome = open_outcome(request, parsed, req.model)
    cached_tokens = _count_hits(runtime, outcome, found)
    if not missing:
        return _answer(parsed, req, keys.request, found, 0, None, cached_tokens)
    refuse_repeated_keys(parsed.raw, parsed.body)  # the upstream must read what the key read
    if rate is not None:
        await admit_tokens(request, runtime, parsed, rate)
    request[MISS_HEADERS] = cache_headers(parsed.miss_status, keys.request)
    fetched = await _fill(request, runtime, parsed, outcome, req.model, keys, items, found)
    if rate is not None:
        await settle_tokens(
            runtime, rate, 0 if isinstance(fetched, web.Response) else fetched.spent
        )
    if isinstance(fetched, web.Response):
        fetched.headers.update(request[MISS_HEADERS])
        return fetched  # the upstream's error, unchanged
    return _answer(parsed, req, keys.request, found, len(missing), fetched, cached_tokens)


def input_items(value: str | list[Any]) -> list[Any]:
    """The separate inputs of an embeddings request: strings or token arrays."""
    if isinstance(value, str):
        items: list[Any] = [value]
    elif value and all(isinstance(x, int) and not isinstance(x, bool) for x in value):
        items = [value]  # one token array
    else:
        items = value
    if not items:
        raise InvalidRequest("input must not be empty.", param="input")
    if len(items) > MAX_INPUTS:
        raise InvalidRequest(f"input takes at most {MAX_INPUTS} items.", param="input")
    for index, item in enumerate(items):
        ok = (isinstance(item, str) and item) or (
            isinstance(item, list)
            and item
            and all(isinstance(x, int) and not isinstance(x, bool) for x in item)
        )
        if not ok:
            raise InvalidRequest(
                f"input[{index}] must be a non-empty string or a non-empty array of token ids.",
                param="input",
            )
    return items


@dataclass(frozen=True, slots=True)
class _Keys:
    scope: ScopePart
    items: list[str]  # each input's entry key
    request: CacheKey  # the whole request's (X-Cache-Key)

    @classmethod
    def of(cls, runtime: Runtime, parsed: ParsedRequest, items: list[Any]) -> _Keys:
        tenant, keys = parsed.identity.tenant, runtime.keys
        scope = keys.scope_part(parsed.directives, parsed.persona, parsed.user_id, ())
        params = {k: v for k, v in parsed.body.items() if k not in _NOT_KEYED}
        entries = [keys.item_key(tenant, ENDPOINT, params, item, scope).entry for item in items]
        request_key = keys.request_key(tenant, ENDPOINT, {**params, "input": items}, scope)
        return cls(scope, entries, request_key)


async def _lookup(
    runtime: Runtime, parsed: ParsedRequest, keys: _Keys
) -> list[StoredVector | None]:
    found: list[StoredVector | None] = [None] * len(keys.items)
    if parsed.directives.read:
        for i, raw in enumerate(await runtime.store.get_many(keys.items)):
            vector = decode_vector(raw) if raw is not None else None
            if vector is not None and await still_valid(runtime, parsed, vector.meta):
                found[i] = vector
    return found


def _count_hits(runtime: Runtime, outcome: Outcome, found: list[StoredVector | None]) -> int:
    """Counts the cached items in the metrics and ledger; returns their stored tokens."""
    hits = [vector for vector in found if vector is not None]
    saved_tokens = sum(vector.tokens for vector in hits)
    if saved_tokens:
        outcome.saved(runtime.prices, saved_tokens, 0, 0)
    runtime.metrics.embedding_items.labels(CacheStatus.HIT).inc(len(hits))
    runtime.metrics.embedding_items.labels(CacheStatus.MISS).inc(len(found) - len(hits))
    return saved_tokens


@dataclass(frozen=True, slots=True)
class _Fetched:
    model: str
    spent: int  # the prompt tokens this request is charged
    parts: list[tuple[bytes, int]]  # per missing item: its float32 vector and its tokens
    relayed: CIMultiDict[str]  # the upstream's headers fit for the client
    shared: int = 0  # how many requests shared the call (0: not batched)

    def vectors(self, meta: EntryMeta) -> list[StoredVector]:
        now = time.time()
        return [StoredVector(vector, tokens, now, meta) for vector, tokens in self.parts]


async def _fill(
    request: web.Request,
    runtime: Runtime,
    parsed: ParsedRequest,
    outcome: Outcome,
    model: str,
    keys: _Keys,
    items: list[Any],
    found: list[StoredVector | None],
) -> _Fetched | web.Response:
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
) -> _Fetched | web.Response:
    """The inputs of a multi-input request, in one upstream call of their own."""
    body = {**parsed.body, "input": inputs, "encoding_format": "base64"}
    call = UpstreamRequest(
        endpoint=ENDPOINT,
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
    return _Fetched(split.rest["model"], spent, parts, reply.headers)


async def _fetch_batched(
    request: web.Request, runtime: Runtime, parsed: ParsedRequest, item: Any
) -> _Fetched | web.Response:
    """The one input of a single-input request, in a call it may share (micro-batching)."""
    headers = upstream_headers(request, parsed)
    share = await submit_share(
        runtime, BATCHED, parsed, headers, item, lambda: client_connected(request)
    )
    if not isinstance(share, Share):
        return web.Response(status=share.status, body=share.body, headers=share.headers)
    parts = [(share.part, share.item_tokens)]
    return _Fetched(share.rest["model"], share.tokens, parts, share.headers, share.requests)


def _answer(
    parsed: ParsedRequest,
    req: EmbeddingRequest,
    key: CacheKey,
    found: list[StoredVector | None],
    missed: int,
    fetched: _Fetched | None,
    cached_tokens: int,
) -> web.Response:
    encoding = req.encoding_format or "float"
    tokens = cached_tokens + (fetched.spent if fetched else 0)
    body = {
        "object": "list",
        "data": [
            {"object": "embedding", "index": i, "embedding": to_wire(v.vector, encoding)}
            for i, v in enumerate(found)
            if v is not None
        ],
        "model": fetched.model or req.model if fetched else req.model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
    if parsed.directives.bypass:
        status = CacheStatus.BYPASS
    else:
        status = CacheStatus.MISS if missed else CacheStatus.HIT
    response = web.Response(body=_encode(body), content_type="application/json")
    if fetched is not None:
        response.headers.update(client_response_headers(fetched.relayed, decoded=True))
        if fetched.shared:
            response.headers[BATCH_SIZE_HEADER] = str(fetched.shared)
    # A hit assembled from items is as old as its oldest item.
    stored_at = min(v.stored_at for v in found if v is not None) if not missed else None
    response.headers.update(cache_headers(status, key, stored_at))
    response.headers["X-Cache-Hits"] = f"{len(found) - missed}/{len(found)}"
    return response


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
    endpoint=ENDPOINT,
    split=split_answer,
    max_inputs=MAX_INPUTS,
    max_tokens=MAX_CALL_TOKENS,
    extra={"encoding_format": "base64"},
)
