"""`/v1/embeddings`, cached per input item (DESIGN §3).

A request of 100 inputs of which 70 are cached sends only the 30 others upstream, always as
base64, and answers in the original order in the requested `encoding_format`. The answer's
`usage` counts only what went upstream; each stored item keeps its share of those tokens so a
later hit knows what it saved.

A single-input request whose input is not cached is micro-batched (proxy/dispatch/batcher.py):
it may share one upstream call with others of the same model, parameters and upstream account;
its `usage` is then its own part of that call's, and the answer says `X-Batch-Size: N`.
A multi-input request makes one upstream call of its own.
"""

from __future__ import annotations

import binascii
import time
from dataclasses import dataclass
from typing import Any

import msgspec
from aiohttp import web
from multidict import CIMultiDict

from proxy.cache.entry import EntryMeta, StoredVector, decode_vector, encode_entry
from proxy.dispatch.batch_shapes import (
    BATCH_SIZE_HEADER,
    UNBATCHED_FIELDS,
    BatchKind,
    Split,
    batch_key,
)
from proxy.dispatch.flight import Answer
from proxy.errors import ApiError, bad_request
from proxy.handlers.common import (
    BYPASS,
    HIT,
    MISS,
    Understood,
    cache_headers,
    client_connected,
    entry_meta,
    understand,
    upstream_headers,
    view,
)
from proxy.handlers.costing import open_outcome, preflight
from proxy.handlers.freshness import still_valid
from proxy.keys import NON_SEMANTIC_FIELDS
from proxy.runtime import RUNTIME, Runtime
from proxy.ttl import Kind
from proxy.upstream.breakers import UpstreamFailure
from proxy.upstream.client import read_body
from proxy.upstream.headers import client_response_headers
from proxy.vectors import apportion, from_wire, to_wire
from proxy.wire import EmbeddingAnswer, EmbeddingRequest

ENDPOINT = "embeddings"
MAX_INPUTS = 2048
MAX_CALL_TOKENS = 300_000  # the upstream's limit on one call's inputs together
_encode = msgspec.json.Encoder().encode
_decode_answer = msgspec.json.Decoder(EmbeddingAnswer).decode
_NOT_KEYED = NON_SEMANTIC_FIELDS | {"input", "encoding_format"}


async def embeddings(request: web.Request) -> web.StreamResponse:
    runtime = request.app[RUNTIME]
    u = await understand(request, runtime, ENDPOINT, persona_aware=False)
    req = view(EmbeddingRequest, u.body)
    items = input_items(req.input)
    keys = runtime.keys
    tenant = u.identity.tenant
    scope = keys.scope_part(u.directives, u.persona, u.user_id, ())
    params = {k: v for k, v in u.body.items() if k not in _NOT_KEYED}
    item_keys = [keys.item_key(tenant, ENDPOINT, params, item, scope).entry for item in items]
    request_key = keys.request_key(tenant, ENDPOINT, {**params, "input": items}, scope)

    found: list[StoredVector | None] = [None] * len(items)
    if u.directives.read:
        for i, raw in enumerate(await runtime.store.get_many(item_keys)):
            vector = decode_vector(raw) if raw is not None else None
            if vector is not None and await still_valid(runtime, u, vector.meta):
                found[i] = vector
    missing = [i for i, vector in enumerate(found) if vector is None]
    hits = len(items) - len(missing)
    costs = open_outcome(request, u, req.model)
    saved_tokens = sum(vector.tokens for vector in found if vector is not None)
    if saved_tokens:
        costs.saved(runtime.prices, saved_tokens, 0, 0)
    runtime.metrics.embedding_items.labels(HIT).inc(hits)
    runtime.metrics.embedding_items.labels(MISS).inc(len(missing))

    model, spent, relayed, shared = req.model, 0, None, 0
    if missing:
        meta = entry_meta(u, req.model, scope, runtime.invalidations.generation)
        await preflight(runtime, u, req.model)
        if len(items) == 1:
            outcome = await _fetch_batched(request, runtime, u, items[0])
        else:
            outcome = await _fetch(request, runtime, u, [items[i] for i in missing])
        if isinstance(outcome, web.Response):
            outcome.headers.update(cache_headers(MISS, request_key))
            return outcome  # the upstream's error, unchanged
        fetched, relayed, shared = outcome
        model = fetched.model or model
        spent = fetched.spent
        cost = costs.paid(runtime.prices, spent, 0, 0)
        await runtime.budgets.settle(u.identity.tenant, u.user_id, cost)
        new = fetched.vectors(meta)
        for i, vector in zip(missing, new, strict=True):
            found[i] = vector
        if u.directives.write:
            ttl = runtime.ttl.seconds(Kind.EMBEDDINGS, 0.0, u.directives.max_age)
            stored = [
                (item_keys[i], encode_entry(v), ttl) for i, v in zip(missing, new, strict=True)
            ]
            await runtime.store.put_many(stored)

    encoding = req.encoding_format or "float"
    body = {
        "object": "list",
        "data": [
            {"object": "embedding", "index": i, "embedding": to_wire(v.vector, encoding)}
            for i, v in enumerate(found)
            if v is not None
        ],
        "model": model,
        "usage": {"prompt_tokens": spent, "total_tokens": spent},
    }
    status = BYPASS if u.directives.bypass else (HIT if not missing else MISS)
    headers = client_response_headers(relayed, decoded=True) if relayed else {}
    response = web.Response(body=_encode(body), content_type="application/json")
    response.headers.update(headers)
    response.headers.update(cache_headers(status, request_key))
    response.headers["X-Cache-Hits"] = f"{hits}/{len(items)}"
    if shared:
        response.headers[BATCH_SIZE_HEADER] = str(shared)
    return response


def input_items(value: str | list[Any]) -> list[Any]:
    """The separate inputs of an embeddings request: strings or token arrays."""
    if isinstance(value, str):
        items: list[Any] = [value]
    elif value and all(isinstance(x, int) and not isinstance(x, bool) for x in value):
        items = [value]  # one token array
    else:
        items = value
    if not items:
        raise bad_request("input must not be empty.", param="input")
    if len(items) > MAX_INPUTS:
        raise bad_request(f"input takes at most {MAX_INPUTS} items.", param="input")
    for index, item in enumerate(items):
        ok = (isinstance(item, str) and item) or (
            isinstance(item, list)
            and item
            and all(isinstance(x, int) and not isinstance(x, bool) for x in item)
        )
        if not ok:
            raise bad_request(
                f"input[{index}] must be a non-empty string or a non-empty array of token ids.",
                param="input",
            )
    return items


@dataclass(frozen=True, slots=True)
class _Fetched:
    model: str
    spent: int  # the prompt tokens this request is charged
    parts: list[tuple[bytes, int]]  # per missing item: its float32 vector and its tokens

    def vectors(self, meta: EntryMeta) -> list[StoredVector]:
        now = time.time()
        return [StoredVector(vector, tokens, now, meta) for vector, tokens in self.parts]


# What a fetch gives: the vectors, relayable upstream headers and how many requests shared
# the call (0: not batched); or the upstream's error, to relay.
_Outcome = tuple[_Fetched, CIMultiDict[str], int] | web.Response


async def _fetch(
    request: web.Request, runtime: Runtime, u: Understood, inputs: list[Any]
) -> _Outcome:
    """The inputs of a multi-input request, in one upstream call of their own."""
    body = {**u.body, "input": inputs, "encoding_format": "base64"}
    headers = upstream_headers(request, u)
    breaker = runtime.breakers.for_endpoint(ENDPOINT)
    breaker.admit()  # an open breaker answers 503 before the call queues for a slot
    async with runtime.gate.slot(u.priority, lambda: client_connected(request)):
        try:
            with breaker.guard():
                started = time.perf_counter()
                upstream = await runtime.upstream.send("POST", request.path, headers, _encode(body))
                elapsed = time.perf_counter() - started
                runtime.metrics.observe_upstream(ENDPOINT, upstream.status, elapsed)
                payload = await read_body(upstream)
                if upstream.status >= 500:
                    raise UpstreamFailure(upstream.status, payload)
        except UpstreamFailure:
            pass  # counted by the breaker; relayed below like any other error
    relayed = client_response_headers(upstream.headers, decoded=True)
    if upstream.status != 200:
        return web.Response(status=upstream.status, body=payload, headers=relayed)
    try:
        split = split_answer(payload, len(inputs))
    except ValueError as exc:
        raise ApiError(502, f"The upstream API sent {exc}.", code="bad_upstream_answer") from None
    spent = split.prompt_tokens or 0
    shares = apportion(spent, [len(item) for item in inputs])
    fetched = _Fetched(split.rest["model"], spent, list(zip(split.parts, shares, strict=True)))
    return fetched, relayed, 0


async def _fetch_batched(
    request: web.Request, runtime: Runtime, u: Understood, item: Any
) -> _Outcome:
    """The one input of a single-input request, in a call it may share (micro-batching)."""
    params = {k: v for k, v in u.body.items() if k not in UNBATCHED_FIELDS}
    headers = upstream_headers(request, u)
    key = batch_key(ENDPOINT, request.path, params, u.identity.upstream_authorization, headers)
    outcome = await runtime.batcher.submit(
        key,
        BATCHED,
        item,
        params=params,
        headers=headers,
        priority=u.priority,
        wanted=lambda: client_connected(request),
    )
    if isinstance(outcome, Answer):
        return web.Response(status=outcome.status, body=outcome.body, headers=outcome.headers)
    fetched = _Fetched(outcome.rest["model"], outcome.tokens, [(outcome.part, outcome.item_tokens)])
    return fetched, outcome.headers, outcome.requests


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
