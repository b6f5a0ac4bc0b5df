"""`POST /v1/chat/completions` and `POST /v1/completions`, plain JSON or SSE."""

from __future__ import annotations

import time
import uuid
from typing import Any

from aiohttp import web

from .content import (
    DEFAULT_REPLY_WORDS,
    MAX_REPLY_WORDS,
    chat_prompt_tokens,
    item_tokens,
    reply_words,
    request_seed,
    word_deltas,
)
from .inputs import ChatParams, CompletionParams, convert, input_items, is_stream, object_body
from .sse import SseStream
from .wire import FAKE_KEY, FakeApiError, json_answer

FINGERPRINT = "fp_fake"


def _length(limit: int | None) -> tuple[int, str]:
    """(words to write, finish_reason): `max_tokens` words when set, else the default length."""
    if limit is None:
        return DEFAULT_REPLY_WORDS, "stop"
    return min(limit, MAX_REPLY_WORDS), "length" if limit < DEFAULT_REPLY_WORDS else "stop"


def _usage(prompt: int, completion: int, *, details: bool) -> dict[str, Any]:
    usage: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    if details:
        usage["prompt_tokens_details"] = {"cached_tokens": 0, "audio_tokens": 0}
        usage["completion_tokens_details"] = {"reasoning_tokens": 0, "audio_tokens": 0}
    return usage


class _Envelope:
    """The fields every object of one answer shares (id, created, model, ...)."""

    def __init__(self, prefix: str, obj: str, model: str, include_usage: bool) -> None:
        self.head: dict[str, Any] = {
            "id": prefix + uuid.uuid4().hex,
            "object": obj,
            "created": int(time.time()),
            "model": model,
            "system_fingerprint": FINGERPRINT,
        }
        self.include_usage = include_usage

    def chunk(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        out = {**self.head, "choices": choices}
        if self.include_usage:
            out["usage"] = None
        return out

    def usage_chunk(self, usage: dict[str, Any]) -> dict[str, Any]:
        return {**self.head, "choices": [], "usage": usage}


async def chat_completions(request: web.Request) -> web.StreamResponse:
    body = object_body(request)
    params = convert(body, ChatParams)
    streaming, include_usage = is_stream(params.stream, params.stream_options)
    count, finish = _length(params.max_completion_tokens or params.max_tokens)
    seed = request_seed(body)
    replies = [reply_words(seed, i, count) for i in range(params.n or 1)]
    usage = _usage(chat_prompt_tokens(params.messages), sum(map(len, replies)), details=True)
    if not streaming:
        envelope = _Envelope("chatcmpl-", "chat.completion", params.model, False)
        choices = [
            {
                "index": i,
                "message": {"role": "assistant", "content": " ".join(words), "refusal": None},
                "logprobs": None,
                "finish_reason": finish,
            }
            for i, words in enumerate(replies)
        ]
        if request.app[FAKE_KEY].empty_choices:
            choices = []
        payload = {**envelope.head, "choices": choices, "usage": usage, "service_tier": "default"}
        return json_answer(request, payload)

    envelope = _Envelope("chatcmpl-", "chat.completion.chunk", params.model, include_usage)
    stream = SseStream(request, request.app[FAKE_KEY])
    await stream.open()
    for i, words in enumerate(replies):
        pieces: list[dict[str, Any]] = [{"role": "assistant", "content": ""}]
        pieces += [{"content": piece} for piece in word_deltas(words)]
        for delta in pieces:
            choice = {"index": i, "delta": delta, "logprobs": None, "finish_reason": None}
            await stream.send(envelope.chunk([choice]))
        end = {"index": i, "delta": {}, "logprobs": None, "finish_reason": finish}
        await stream.send(envelope.chunk([end]))
    if include_usage:
        await stream.send(envelope.usage_chunk(usage))
    return await stream.finish()


async def completions(request: web.Request) -> web.StreamResponse:
    body = object_body(request)
    params = convert(body, CompletionParams)
    streaming, include_usage = is_stream(params.stream, params.stream_options)
    prompts = input_items(params.prompt, "prompt")
    if not prompts:
        raise FakeApiError(
            400, "'$.prompt' is invalid: the prompt must not be empty.", param="prompt"
        )
    count, finish = _length(params.max_tokens)
    seed = request_seed(body)
    n = params.n or 1
    replies = [reply_words(seed, i, count) for i in range(len(prompts) * n)]
    usage = _usage(sum(map(item_tokens, prompts)), sum(map(len, replies)), details=False)
    envelope = _Envelope("cmpl-", "text_completion", params.model, include_usage)
    if not streaming:
        choices = [
            {"text": " ".join(words), "index": i, "logprobs": None, "finish_reason": finish}
            for i, words in enumerate(replies)
        ]
        return json_answer(request, {**envelope.head, "choices": choices, "usage": usage})

    stream = SseStream(request, request.app[FAKE_KEY])
    await stream.open()
    for i, words in enumerate(replies):
        for piece in word_deltas(words):
            choice = {"text": piece, "index": i, "logprobs": None, "finish_reason": None}
            await stream.send(envelope.chunk([choice]))
        end = {"text": "", "index": i, "logprobs": None, "finish_reason": finish}
        await stream.send(envelope.chunk([end]))
    if include_usage:
        await stream.send(envelope.usage_chunk(usage))
    return await stream.finish()
