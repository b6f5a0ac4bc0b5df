"""`/v1/embeddings`, cached per input item (DESIGN §3).

A request of 100 inputs of which 70 are cached sends only the 30 others upstream, always as
base64, and answers in the original order in the requested `encoding_format`. The answer's
`usage` counts only what went upstream; each stored item keeps its share of those tokens so a
later hit knows what it saved.
"""

from __future__ import annotations

import binascii
import time
from typing import Any

import msgspec
from aiohttp import web

from proxy.cache.entry import StoredVector, decode_vector, encode_entry
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
    view,
)
from proxy.keys import NON_SEMANTIC_FIELDS
from proxy.runtime import RUNTIME, Runtime
from proxy.ttl import Kind
from proxy.upstream.breakers import UpstreamFailure
from proxy.upstream.client import read_body
from proxy.upstream.headers import client_response_headers, upstream_request_headers
from proxy.vectors import apportion, from_wire, to_wire
from proxy.wire import EmbeddingAnswer, EmbeddingRequest

ENDPOINT = "embeddings"
MAX_INPUTS = 2048
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
            found[i] = decode_vector(raw) if raw is not None else None
    missing = [i for i, vector in enumerate(found) if vector is None]
    hits = len(items) - len(missing)
    runtime.metrics.embedding_items.labels(HIT).inc(hits)
    runtime.metrics.embedding_items.labels(MISS).inc(len(missing))

    model, spent, relayed = req.model, 0, None
    if missing:
        fetched = await _fetch(request, runtime, u, [items[i] for i in missing])
        if isinstance(fetched, web.Response):
            fetched.headers.update(cache_headers(MISS, request_key))
            return fetched  # the upstream's error, unchanged
        answer, relayed = fetched
        model = answer.model or model
        spent = answer.usage.prompt_tokens if answer.usage else 0
        new = _stored_vectors(answer, missing, items, u, req.model, scope)
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


async def _fetch(
    request: web.Request, runtime: Runtime, u: Understood, inputs: list[Any]
) -> tuple[EmbeddingAnswer, Any] | web.Response:
    body = {**u.body, "input": inputs, "encoding_format": "base64"}
    headers = upstream_request_headers(
        request.headers, u.identity.upstream_authorization, keep_encoding=False
    )
    breaker = runtime.breakers.for_endpoint(ENDPOINT)
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
    if upstream.status != 200:
        relayed = client_response_headers(upstream.headers, decoded=True)
        return web.Response(status=upstream.status, body=payload, headers=relayed)
    try:
        answer = _decode_answer(payload)
    except msgspec.DecodeError as exc:
        raise _bad_upstream(f"an unreadable embeddings answer ({exc})") from None
    indices = sorted(item.index for item in answer.data)
    if indices != list(range(len(inputs))):
        raise _bad_upstream(f"{len(answer.data)} embeddings for {len(inputs)} inputs")
    return answer, upstream.headers


def _stored_vectors(
    answer: EmbeddingAnswer,
    missing: list[int],
    items: list[Any],
    u: Understood,
    model: str,
    scope: tuple[Any, ...],
) -> list[StoredVector]:
    spent = answer.usage.prompt_tokens if answer.usage else 0
    shares = apportion(spent, [len(items[i]) for i in missing])
    meta = entry_meta(u, model, scope)
    now = time.time()
    by_index = {item.index: item.embedding for item in answer.data}
    try:
        return [
            StoredVector(from_wire(by_index[n]), shares[n], now, meta) for n in range(len(missing))
        ]
    except (binascii.Error, ValueError, TypeError) as exc:
        raise _bad_upstream(f"an embedding that is not float32 data ({exc})") from None


def _bad_upstream(what: str) -> ApiError:
    return ApiError(502, f"The upstream API sent {what}.", code="bad_upstream_answer")
