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
budget pre-flight, upstream call, store, answer, ledger outcome. This module runs them and
assembles the answer; what the items are and how each is keyed is embeddings_items.py's, the
missing items' upstream call, charge and store embeddings_fetch.py's.
"""

from __future__ import annotations

import msgspec
from aiohttp import web

from proxy.accounting import Outcome
from proxy.cache.entry import StoredVector, decode_vector
from proxy.dispatch.batch_shapes import BATCH_SIZE_HEADER
from proxy.handlers.answers import MISS_HEADERS, cache_headers
from proxy.handlers.costing import open_outcome
from proxy.handlers.embeddings_fetch import Fetched, fill_missing
from proxy.handlers.embeddings_items import ItemKeys, input_items
from proxy.handlers.freshness import still_valid
from proxy.handlers.json_body import refuse_repeated_keys
from proxy.handlers.parse import ParsedRequest, parse_request, view
from proxy.handlers.rate import (
    admit_request,
    admit_tokens,
    charged,
    settle_tokens,
)
from proxy.keys import CacheKey
from proxy.runtime import RUNTIME, Runtime
from proxy.upstream.headers import client_response_headers
from proxy.vectors import to_wire
from proxy.vocabulary import CacheStatus, Endpoint
from proxy.wire import EmbeddingRequest

_encode = msgspec.json.Encoder().encode


async def embeddings(request: web.Request) -> web.StreamResponse:
    runtime = request.app[RUNTIME]
    parsed = await parse_request(request, runtime, Endpoint.EMBEDDINGS, persona_aware=False)
    req = view(EmbeddingRequest, parsed.body)
    items = input_items(req.input)
    keys = ItemKeys.of(runtime, parsed, items)
    limiter = runtime.limiter
    tenant, user_id = parsed.identity.tenant, parsed.user_id
    counting = limiter.check_request(tenant, user_id) if limiter.active else None
    try:
        found = await _lookup(runtime, parsed, keys)
    finally:
        if counting is not None:  # every request counts, whatever it found (docs/design.md §13)
            await admit_request(request, runtime, parsed, counting)
    missing = [i for i, vector in enumerate(found) if vector is None]
    outcome = open_outcome(request, parsed, req.model)
    cached_tokens = _count_hits(runtime, outcome, found)
    if not missing:
        return _answer(parsed, req, keys.request, found, 0, None, cached_tokens)
    refuse_repeated_keys(parsed.raw, parsed.body)  # the upstream must read what the key read
    rate = charged(runtime, parsed) if counting is not None else None
    if rate is not None:
        await admit_tokens(request, runtime, parsed, rate)
    request[MISS_HEADERS] = cache_headers(parsed.miss_status, keys.request)
    fetched = await fill_missing(request, runtime, parsed, outcome, req.model, keys, items, found)
    if rate is not None:
        await settle_tokens(
            runtime, rate, 0 if isinstance(fetched, web.Response) else fetched.spent
        )
    if isinstance(fetched, web.Response):
        fetched.headers.update(request[MISS_HEADERS])
        return fetched  # the upstream's error, unchanged
    return _answer(parsed, req, keys.request, found, len(missing), fetched, cached_tokens)


async def _lookup(
    runtime: Runtime, parsed: ParsedRequest, keys: ItemKeys
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


def _answer(
    parsed: ParsedRequest,
    req: EmbeddingRequest,
    key: CacheKey,
    found: list[StoredVector | None],
    missed: int,
    fetched: Fetched | None,
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
