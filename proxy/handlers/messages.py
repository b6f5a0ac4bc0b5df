"""`/v1/messages`, Anthropic's Messages API, understood like chat (docs/design.md §11): the
persona-aware cache, JSON or SSE either way (proxy/cache/messages_stream.py), single-flight,
the ledger and budgets. Its wire adapter for the pipeline (proxy/handlers/pipeline.py).

The tenant comes from `x-api-key` or `Authorization` (proxy/tenancy.py counts both);
`anthropic-version` goes upstream as sent; `anthropic-beta` changes what the upstream does, so
its value is part of the key. Errors the sidecar makes itself for this route are answered in
Anthropic's shape (proxy/errors.py `anthropic_failure_response`, picked by proxy/server.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import msgspec
from aiohttp import web

from proxy.cache.messages_stream import MESSAGE
from proxy.dispatch.call import Validator
from proxy.handlers.parse import ParsedRequest, view
from proxy.handlers.pipeline import serve_cached
from proxy.handlers.route import Asked, Batching, CachedRoute
from proxy.ttl import chat_kind
from proxy.vocabulary import Endpoint
from proxy.wire import PromptTokensDetails, Usage

BETA_HEADER = "anthropic-beta"


class MessagesRequest(msgspec.Struct):
    """The fields of a Messages request that steer caching (the rest goes upstream as sent)."""

    model: str
    max_tokens: int
    messages: list[object]
    stream: bool | None = None
    temperature: float | None = None


class AnthropicUsage(msgspec.Struct):
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_input_tokens: int | None = None
    cache_creation_input_tokens: int | None = None

    def as_usage(self) -> Usage:
        """In chat's names (proxy/wire.py): every input token, cached reads and cache writes
        included, is a prompt token."""
        read = self.cache_read_input_tokens or 0
        written = self.cache_creation_input_tokens or 0
        prompt = self.input_tokens + read + written
        return Usage(
            prompt_tokens=prompt,
            completion_tokens=self.output_tokens,
            total_tokens=prompt + self.output_tokens,
            prompt_tokens_details=PromptTokensDetails(cached_tokens=read),
            cache_write_tokens=written,
        )


class MessagesAnswer(msgspec.Struct):
    """Enough of a `message` to know it is whole (a type, its content, why it stopped)."""

    type: str
    content: list[object]
    stop_reason: str | None = None
    usage: AnthropicUsage | None = None


_decode_answer = msgspec.json.Decoder(MessagesAnswer).decode


def validate_message(body: bytes) -> Usage | None:
    """The usage of a whole message; None for anything else (never stored)."""
    try:
        answer = _decode_answer(body)
    except msgspec.DecodeError:
        return None
    if answer.type != MESSAGE or answer.stop_reason is None:
        return None
    return answer.usage.as_usage() if answer.usage is not None else Usage()


@dataclass(frozen=True, slots=True)
class MessagesWire:
    stream_kind: str = MESSAGE
    validate: Validator = validate_message
    batching: Batching | None = None

    def read(self, parsed: ParsedRequest) -> Asked:
        req = view(MessagesRequest, parsed.body)
        return Asked(
            model=req.model, ttl_kind=chat_kind(req.temperature, None), stream=bool(req.stream)
        )

    def upstream_body(self, parsed: ParsedRequest, asked: Asked) -> bytes:
        return parsed.raw  # a Messages stream always carries its usage


MESSAGES_ROUTE = CachedRoute(
    Endpoint.MESSAGES,
    MessagesWire(),
    persona_aware=True,
    semantic=True,  # its `messages` read as chat's (proxy/semantic/question.py)
    key_headers=(BETA_HEADER,),
)


async def messages(request: web.Request) -> web.StreamResponse:
    return await serve_cached(request, MESSAGES_ROUTE)
