"""`POST /v1/responses` (OpenAI's Responses API), understood like chat (docs/design.md §11):
persona-aware exact and semantic cache, JSON or SSE either way, single-flight, ledger and
budgets, all through the pipeline (proxy/handlers/pipeline.py). Its wire adapter:

- the key is chat's rules (proxy/canonical.py) with `previous_response_id` and `conversation`
  in it like any field, so a chain is only ever served within itself and its tenant;
- `background: true` asks the upstream to answer later (a `queued` response polled by id):
  nothing to cache, so the request bypasses the cache (X-Cache: BYPASS, never stored);
- an answer is whole (stored) only when its `status` is `completed` and it has output; its
  usage (`input_tokens`, `output_tokens` and their details) is read into chat's names.

Other `/v1/responses/*` routes (retrieve, cancel, delete, input items) are passed through.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

import msgspec
from aiohttp import web

from proxy.cache.responses_stream import RESPONSES
from proxy.dispatch.call import Validator
from proxy.handlers.parse import ParsedRequest, view
from proxy.handlers.pipeline import serve_cached
from proxy.handlers.prompt_cache import with_prompt_cache_key
from proxy.handlers.route import Asked, Batching, CachedRoute
from proxy.runtime import RUNTIME
from proxy.ttl import chat_kind
from proxy.vocabulary import Endpoint
from proxy.wire import CompletionTokensDetails, PromptTokensDetails, Usage


class ResponsesRequest(msgspec.Struct):
    """The fields of a Responses request that steer caching."""

    model: str
    stream: bool | None = None
    temperature: float | None = None
    background: bool | None = None


class InputTokensDetails(msgspec.Struct):
    cached_tokens: int | None = 0


class OutputTokensDetails(msgspec.Struct):
    reasoning_tokens: int | None = 0


class ResponsesUsage(msgspec.Struct):
    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0
    input_tokens_details: InputTokensDetails | None = None
    output_tokens_details: OutputTokensDetails | None = None

    def as_usage(self) -> Usage:
        """In chat's names: every input token is a prompt token, every output one (reasoning
        included) a completion token."""
        cached = self.input_tokens_details
        reasoning = self.output_tokens_details
        return Usage(
            prompt_tokens=self.input_tokens,
            completion_tokens=self.output_tokens,
            total_tokens=self.total_tokens or self.input_tokens + self.output_tokens,
            prompt_tokens_details=PromptTokensDetails(cached.cached_tokens if cached else 0),
            completion_tokens_details=CompletionTokensDetails(
                reasoning.reasoning_tokens if reasoning else 0
            ),
        )


class ResponsesAnswer(msgspec.Struct):
    """Enough of a `response` object to know it is whole and what it cost: a queued, failed,
    incomplete or cancelled response, or one with no output, is never stored."""

    object: Literal["response"]
    status: Literal["completed"]
    output: Annotated[list[Any], msgspec.Meta(min_length=1)]
    usage: ResponsesUsage | None = None


_DECODE_ANSWER = msgspec.json.Decoder(ResponsesAnswer).decode


def validate_response(body: bytes) -> Usage | None:
    try:
        answer = _DECODE_ANSWER(body)
    except msgspec.DecodeError:  # a ValidationError too: not whole
        return None
    return answer.usage.as_usage() if answer.usage is not None else Usage()


_encode = msgspec.json.Encoder().encode


@dataclass(frozen=True, slots=True)
class ResponsesWire:
    stream_kind: str = RESPONSES
    validate: Validator = validate_response
    batching: Batching | None = None
    # Set a provider prompt_cache_key when the client sent none (PROMPT_CACHE_KEY).
    prompt_cache: bool = False

    def read(self, parsed: ParsedRequest) -> Asked:
        req = view(ResponsesRequest, parsed.body)
        if req.background:
            # Answered later, by id: nothing whole to store or serve. Decided before the key
            # is used, so every later step reads only the directives (as for no-store).
            parsed.directives = parsed.directives.uncached()
        return Asked(
            model=req.model,
            ttl_kind=chat_kind(req.temperature, None),
            stream=bool(req.stream),
        )

    def upstream_body(self, parsed: ParsedRequest, asked: Asked) -> bytes:
        # The client's bytes unless a key is added: a Responses stream always ends with its
        # usage, so nothing else needs changing.
        keyed = (
            with_prompt_cache_key(parsed.body, parsed.identity.tenant)
            if self.prompt_cache
            else None
        )
        return parsed.raw if keyed is None else _encode(keyed)


RESPONSES_ROUTE = CachedRoute(
    Endpoint.RESPONSES, ResponsesWire(prompt_cache=True), persona_aware=True, semantic=True
)
RESPONSES_ROUTE_UNKEYED = CachedRoute(  # PROMPT_CACHE_KEY=off
    Endpoint.RESPONSES, ResponsesWire(), persona_aware=True, semantic=True
)


async def responses(request: web.Request) -> web.StreamResponse:
    keyed = request.app[RUNTIME].settings.upstream.prompt_cache_key
    return await serve_cached(request, RESPONSES_ROUTE if keyed else RESPONSES_ROUTE_UNKEYED)
