"""`POST /v1/chat/completions` and `POST /v1/completions`, plain JSON or SSE."""

from __future__ import annotations

import time
import uuid
from typing import Any

from aiohttp import web

from .catalog import check_model
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
from .logprobs import chat_logprobs, join_text, text_logprobs
from .sse import SseStream
from .state import FakeUpstream
from .toolcalls import call_deltas, call_tokens, chosen_functions, tool_calls
from .wire import FAKE_KEY, FakeApiError, json_answer

FINGERPRINT = "fp_fake"


def _length(limit: int | None) -> tuple[int, str]:
    """(words to write, finish_reason): `max_tokens` words when set, else the default length."""
    if limit is None:
        return DEFAULT_REPLY_WORDS, "stop"
    return min(limit, MAX_REPLY_WORDS), "length" if limit < DEFAULT_REPLY_WORDS else "stop"


def _usage(
    prompt: int, completion: int, *, details: bool, cached: int = 0, reasoning: int = 0
) -> dict[str, Any]:
    """Chat's usage: `cached` of the prompt tokens read from the prompt cache, and `reasoning`
    tokens counted in the completion besides the `completion` written (the fake's knobs)."""
    completion += reasoning
    usage: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    if details:
        usage["prompt_tokens_details"] = {"cached_tokens": min(cached, prompt), "audio_tokens": 0}
        usage["completion_tokens_details"] = {"reasoning_tokens": reasoning, "audio_tokens": 0}
    return usage


class _Envelope:
    """The fields every object of one answer shares (id, created, model, ...)."""

    def __init__(
        self, prefix: str, obj: str, model: str, include_usage: bool, tier: str | None = None
    ) -> None:
        self.head: dict[str, Any] = {
            "id": prefix + uuid.uuid4().hex,
            "object": obj,
            "created": int(time.time()),
            "model": model,
            "system_fingerprint": FINGERPRINT,
        }
        if tier is not None:
            self.head["service_tier"] = tier
        self.include_usage = include_usage

    def chunk(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        out = {**self.head, "choices": choices}
        if self.include_usage:
            out["usage"] = None
        return out

    def usage_chunk(self, usage: dict[str, Any]) -> dict[str, Any]:
        return {**self.head, "choices": [], "usage": usage}


def _served_tier(asked: str | None) -> str:
    """The tier OpenAI says served a chat call: the one asked for, "default" for auto or none."""
    return "default" if asked in (None, "auto") else asked


def _top_logprobs(params: ChatParams) -> int | None:
    """How many alternatives per token, or None when logprobs were not asked for."""
    if params.top_logprobs is not None and not params.logprobs:
        raise FakeApiError(
            400,
            "Invalid value for 'top_logprobs': it can only be set when 'logprobs' is true.",
            param="top_logprobs",
        )
    return (params.top_logprobs or 0) if params.logprobs else None


def _chat_choices(
    params: ChatParams, seed: bytes, fake: FakeUpstream
) -> tuple[list[dict[str, Any]], int]:
    """(the whole choices, completion tokens): text (with logprobs when asked) or tool calls."""
    count, finish = _length(params.max_completion_tokens or params.max_tokens)
    functions, tool_finish = chosen_functions(
        params.tools, params.tool_choice, params.parallel_tool_calls, fake.prefer_tools
    )
    top = _top_logprobs(params)
    choices: list[dict[str, Any]] = []
    tokens = 0
    for i in range(params.n or 1):
        if functions:
            calls = tool_calls(seed, i, functions)
            tokens += call_tokens(calls)
            message = {"role": "assistant", "content": None, "tool_calls": calls}
            choice = {"index": i, "message": {**message, "refusal": None}, "logprobs": None}
            choices.append({**choice, "finish_reason": tool_finish})
            continue
        words = reply_words(seed, i, count)
        tokens += len(words)
        message = {"role": "assistant", "content": " ".join(words), "refusal": None}
        logprobs = None
        if top is not None:
            logprobs = {"content": chat_logprobs(seed, i, words, top), "refusal": None}
        choices.append(
            {"index": i, "message": message, "logprobs": logprobs, "finish_reason": finish}
        )
    return choices, tokens


def _chat_pieces(choice: dict[str, Any]) -> list[tuple[dict[str, Any], Any]]:
    """(delta, logprobs) of each chunk of one streamed choice, before its closing chunk."""
    message = choice["message"]
    if message.get("tool_calls"):
        return [(delta, None) for delta in call_deltas(message["tool_calls"])]
    pieces: list[tuple[dict[str, Any], Any]] = [({"role": "assistant", "content": ""}, None)]
    entries = (choice["logprobs"] or {}).get("content")
    for n, piece in enumerate(word_deltas(message["content"].split(" "))):
        logprobs = None if entries is None else {"content": [entries[n]], "refusal": None}
        pieces.append(({"content": piece}, logprobs))
    return pieces


async def chat_completions(request: web.Request) -> web.StreamResponse:
    fake = request.app[FAKE_KEY]
    body = object_body(request)
    params = convert(body, ChatParams)
    check_model(fake, params.model)
    streaming, include_usage = is_stream(params.stream, params.stream_options)
    choices, completion_tokens = _chat_choices(params, request_seed(body), fake)
    usage = _usage(
        chat_prompt_tokens(params.messages),
        completion_tokens,
        details=True,
        cached=fake.cached_tokens,
        reasoning=fake.reasoning_tokens,
    )
    tier = _served_tier(params.service_tier)
    answered = params.model + fake.model_suffix
    if not streaming:
        envelope = _Envelope("chatcmpl-", "chat.completion", answered, False, tier)
        if fake.empty_choices:
            choices = []
        payload = {**envelope.head, "choices": choices, "usage": usage}
        return json_answer(request, payload)

    envelope = _Envelope("chatcmpl-", "chat.completion.chunk", answered, include_usage, tier)
    stream = SseStream(request, fake)
    await stream.open()
    for choice in choices:
        i = choice["index"]
        for delta, logprobs in _chat_pieces(choice):
            part = {"index": i, "delta": delta, "logprobs": logprobs, "finish_reason": None}
            await stream.send(envelope.chunk([part]))
        end = {"index": i, "delta": {}, "logprobs": None, "finish_reason": choice["finish_reason"]}
        await stream.send(envelope.chunk([end]))
    if include_usage:
        await stream.send(envelope.usage_chunk(usage))
    return await stream.finish()


async def completions(request: web.Request) -> web.StreamResponse:
    body = object_body(request)
    params = convert(body, CompletionParams)
    check_model(request.app[FAKE_KEY], params.model)
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
    top = params.logprobs
    logprobs = [
        [] if top is None else text_logprobs(seed, i, w, top) for i, w in enumerate(replies)
    ]
    if not streaming:
        choices = [
            {
                "text": " ".join(words),
                "index": i,
                "logprobs": None if top is None else join_text(logprobs[i]),
                "finish_reason": finish,
            }
            for i, words in enumerate(replies)
        ]
        return json_answer(request, {**envelope.head, "choices": choices, "usage": usage})

    stream = SseStream(request, request.app[FAKE_KEY])
    await stream.open()
    for i, words in enumerate(replies):
        for n, piece in enumerate(word_deltas(words)):
            piece_logprobs = None if top is None else logprobs[i][n]
            choice = {"text": piece, "index": i, "logprobs": piece_logprobs, "finish_reason": None}
            await stream.send(envelope.chunk([choice]))
        end = {"text": "", "index": i, "logprobs": None, "finish_reason": finish}
        await stream.send(envelope.chunk([end]))
    if include_usage:
        await stream.send(envelope.usage_chunk(usage))
    return await stream.finish()
