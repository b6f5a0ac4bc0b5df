"""`/v1/moderations`: whole answers cached per tenant (persona never matters to a verdict).

A miss is a single-flight (identical concurrent requests share it, marked COALESCED). When the
request holds one text, its flight's upstream call is micro-batched
(proxy/dispatch/batcher.py): texts from other requests of the same model and upstream account
that arrive while the batch is open (the adaptive window: `AI_BATCH_WAIT_MS`, `AI_BATCH_GAP_MS`,
`AI_BATCH_MAX_WAIT_MS`) go up in the same call, each request is answered with its
own result (and `X-Batch-Size: N`), and stored under its own key exactly as an unbatched answer
is. A list of texts, or of multi-modal parts, makes one upstream call of its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec
from aiohttp import web

from proxy.dispatch.batch_shapes import BatchKind, Share, Split
from proxy.dispatch.call import Validator, validator
from proxy.handlers.parse import ParsedRequest, view
from proxy.handlers.pipeline import serve_cached
from proxy.handlers.route import Asked, Batching, CachedRoute
from proxy.ids import SerialIds
from proxy.ttl import Kind
from proxy.vocabulary import Endpoint
from proxy.wire import ModerationAnswer, ModerationRequest, Usage

DEFAULT_MODEL = "omni-moderation-latest"  # what the API uses when a request names none
_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode


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


class ShareAnswers:
    """Cuts one text's answer from a merged call's, as if it had been asked alone: its own
    result, its share of the usage, and an `id` of its own when others shared the call (one
    answer's id is never given to two requests, as the upstream never does)."""

    def __init__(self) -> None:
        self._ids = SerialIds("modr-")

    def __call__(self, share: Share) -> tuple[bytes, Usage]:
        answer: dict[str, Any] = {**share.rest, "results": [share.part]}
        if share.requests > 1:
            answer["id"] = self._ids()
        if share.has_usage:
            answer["usage"] = {"prompt_tokens": share.tokens, "total_tokens": share.tokens}
        usage = Usage(prompt_tokens=share.item_tokens, total_tokens=share.item_tokens)
        return _encode(answer), usage


BATCHED = BatchKind(endpoint=Endpoint.MODERATIONS, split=split_answer)
_BATCHING = Batching(BATCHED, ShareAnswers())
_VALIDATE = validator(ModerationAnswer)


@dataclass(frozen=True, slots=True)
class ModerationWire:
    validate: Validator = _VALIDATE
    stream_kind: str = ""
    batching: Batching | None = _BATCHING

    def read(self, parsed: ParsedRequest) -> Asked:
        req = view(ModerationRequest, parsed.body)
        return Asked(
            model=req.model or DEFAULT_MODEL,
            ttl_kind=Kind.MODERATIONS,
            batch_item=_single_text(req.input),
        )

    def upstream_body(self, parsed: ParsedRequest, asked: Asked) -> bytes:
        return parsed.raw


ROUTE = CachedRoute(Endpoint.MODERATIONS, ModerationWire(), persona_aware=False)


async def moderations(request: web.Request) -> web.StreamResponse:
    return await serve_cached(request, ROUTE)


def _single_text(value: str | list[Any]) -> str | None:
    if isinstance(value, str):
        return value
    if len(value) == 1 and isinstance(value[0], str):
        return value[0]
    return None
