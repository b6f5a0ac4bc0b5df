"""msgspec views of the parts of OpenAI bodies the sidecar reads; everything else is forwarded."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec


class StreamOptions(msgspec.Struct):
    include_usage: bool | None = None


class GenerativeRequest(msgspec.Struct):
    """`/v1/chat/completions` and `/v1/completions`: the fields that steer caching."""

    model: str
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    temperature: float | None = None
    seed: int | None = None


class EmbeddingRequest(msgspec.Struct):
    model: str
    input: str | list[Any]
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: int | None = None


class ModerationRequest(msgspec.Struct):
    input: str | list[Any]
    model: str | None = None


class PromptTokensDetails(msgspec.Struct):
    cached_tokens: int | None = 0


class CompletionTokensDetails(msgspec.Struct):
    reasoning_tokens: int | None = 0


class Usage(msgspec.Struct):
    """A call's tokens as the sidecar counts them, named as chat's `usage` names them: every
    endpoint's usage (chat, Responses, Messages) is read into this shape. `prompt_tokens`
    counts every input token, cached reads and cache writes included; `completion_tokens`
    every output token, reasoning included."""

    prompt_tokens: int = 0
    completion_tokens: int | None = 0
    total_tokens: int = 0
    prompt_tokens_details: PromptTokensDetails | None = None
    completion_tokens_details: CompletionTokensDetails | None = None
    # Not in chat's usage: input tokens written to the provider's prompt cache (Anthropic's
    # `cache_creation_input_tokens`), billed at a rate of their own.
    cache_write_tokens: int = 0

    @property
    def cached_tokens(self) -> int:
        details = self.prompt_tokens_details
        return (details.cached_tokens or 0) if details else 0

    @property
    def reasoning_tokens(self) -> int:
        details = self.completion_tokens_details
        return (details.reasoning_tokens or 0) if details else 0


class GenerativeAnswer(msgspec.Struct):
    """Enough of a chat.completion / text_completion to know it is whole and what it cost.
    An answer with no choice is not whole (a 200 that says nothing), so it is never stored."""

    object: Literal["chat.completion", "text_completion"]
    choices: Annotated[list[Any], msgspec.Meta(min_length=1)]
    model: str = ""
    usage: Usage | None = None


class ModerationAnswer(msgspec.Struct):
    results: list[Any]
    model: str = ""


class EmbeddingItem(msgspec.Struct):
    index: int
    embedding: str | list[float]


class EmbeddingAnswer(msgspec.Struct):
    data: list[EmbeddingItem]
    model: str = ""
    usage: Usage | None = None
