"""`POST /v1/messages`, Anthropic's Messages API: a whole `message` as JSON, or its SSE event
sequence (`event:` lines included) when `stream` is true.

The text is the fake's deterministic words (content.py). `max_tokens` words at most, else the
default length (`stop_reason` "max_tokens" when it cut the answer short, else "end_turn"); with
`tools` and `tool_choice` `any`/`tool` (or `auto` with the `prefer_tools` knob), one `tool_use`
block. Usage counts the prompt's words; a prompt prefix ending at a block marked
`cache_control` is "written" to a prompt cache on its first request
(`cache_creation_input_tokens`) and "read" on repeats (`cache_read_input_tokens`).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from typing import Any

import msgspec
from aiohttp import web

from .catalog import check_model
from .content import (
    DEFAULT_REPLY_WORDS,
    MESSAGE_OVERHEAD_TOKENS,
    content_text,
    count_words,
    reply_words,
    request_seed,
    word_deltas,
)
from .inputs import convert, object_body
from .sse import SseStream
from .state import FakeUpstream
from .toolcalls import tool_calls
from .wire import FAKE_KEY, FakeApiError, json_answer

_CANONICAL = msgspec.json.Encoder(order="deterministic")


class MessagesParams(msgspec.Struct):
    model: str
    max_tokens: int
    messages: list[dict[str, Any]]
    system: str | list[dict[str, Any]] | None = None
    stream: bool | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: dict[str, Any] | None = None


def _blocks(params: MessagesParams) -> list[tuple[Any, int]]:
    """(block, tokens) of the prompt in order: the system prompt's, then each message's."""
    out: list[tuple[Any, int]] = []
    system = params.system
    if isinstance(system, str):
        out.append((system, count_words(system)))
    for block in system or () if isinstance(system, list) else ():
        out.append((block, count_words(content_text([block]))))
    for message in params.messages:
        content = message.get("content")
        parts = content if isinstance(content, list) else [content]
        for n, part in enumerate(parts):
            words = count_words(content_text([part] if isinstance(part, dict) else part))
            out.append((part, words + (MESSAGE_OVERHEAD_TOKENS if n == 0 else 0)))
    return out


def _usage(params: MessagesParams, output: int, fake: FakeUpstream) -> dict[str, Any]:
    """Input tokens split as Anthropic splits them: read from the prompt cache, written to it,
    and the rest (only the prefix up to the last `cache_control` mark is cached)."""
    blocks = _blocks(params)
    total = sum(tokens for _, tokens in blocks)
    marked = [
        i for i, (b, _) in enumerate(blocks) if isinstance(b, dict) and b.get("cache_control")
    ]
    read = written = 0
    if marked:
        end = marked[-1] + 1
        prefix = sum(tokens for _, tokens in blocks[:end])
        digest = hashlib.sha256(
            params.model.encode() + _CANONICAL.encode([b for b, _ in blocks[:end]])
        ).digest()
        if digest in fake.prompt_cache:
            read = prefix
        else:
            fake.prompt_cache.add(digest)
            written = prefix
    return {
        "input_tokens": total - read - written,
        "cache_creation_input_tokens": written,
        "cache_read_input_tokens": read,
        "output_tokens": output,
    }


def _tool_block(params: MessagesParams, seed: bytes, fake: FakeUpstream) -> dict[str, Any] | None:
    choice = params.tool_choice or {"type": "auto"}
    tools = [t for t in params.tools or () if isinstance(t.get("name"), str)]
    if not tools or choice.get("type") == "none":
        return None
    if choice.get("type") == "tool":
        tools = [t for t in tools if t["name"] == choice.get("name")]
        if not tools:
            raise FakeApiError(400, f"tool_choice: tool '{choice.get('name')}' not found.")
    elif choice.get("type") != "any" and not fake.prefer_tools:
        return None
    tool = tools[0]
    call = tool_calls(seed, 0, [{"name": tool["name"], "parameters": tool.get("input_schema")}])
    arguments = json.loads(call[0]["function"]["arguments"])
    return {"type": "tool_use", "id": "toolu_" + uuid.uuid4().hex[:24], "name": tool["name"],
            "input": arguments}  # fmt: skip


def make_message(params: MessagesParams, seed: bytes, fake: FakeUpstream) -> dict[str, Any]:
    if params.max_tokens < 1:
        raise FakeApiError(400, "max_tokens: must be greater than or equal to 1")
    tool = _tool_block(params, seed, fake)
    if tool is not None:
        content, stop, output = [tool], "tool_use", 3 + len(json.dumps(tool["input"]).split())
    else:
        count = min(params.max_tokens, DEFAULT_REPLY_WORDS)
        words = reply_words(seed, 0, count)
        stop = "max_tokens" if params.max_tokens < DEFAULT_REPLY_WORDS else "end_turn"
        content, output = [{"type": "text", "text": " ".join(words)}], len(words)
    return {
        "id": "msg_" + uuid.uuid4().hex[:24],
        "type": "message",
        "role": "assistant",
        "model": params.model,
        "content": content,
        "stop_reason": stop,
        "stop_sequence": None,
        "usage": _usage(params, output, fake),
    }


class _EventStream(SseStream):
    """Anthropic's events: `event: <type>` before each `data:`, no `[DONE]`."""

    async def event(self, payload: dict[str, Any]) -> None:
        line = b"event: " + payload["type"].encode() + b"\ndata: " + json.dumps(payload).encode()
        await self._write(line + b"\n\n", counts=True)


async def messages(request: web.Request) -> web.StreamResponse:
    fake = request.app[FAKE_KEY]
    body = object_body(request)
    params = convert(body, MessagesParams)
    check_model(fake, params.model)
    message = make_message(params, request_seed(body), fake)
    if not params.stream:
        return json_answer(request, message)
    stream = _EventStream(request, fake)
    await stream.open()
    usage = message["usage"]
    head = {**message, "content": [], "stop_reason": None, "usage": {**usage, "output_tokens": 1}}
    await stream.event({"type": "message_start", "message": head})
    for index, block in enumerate(message["content"]):
        if block["type"] == "text":
            await stream.event(_start(index, {"type": "text", "text": ""}))
            await stream.event({"type": "ping"})
            for piece in word_deltas(block["text"].split(" ")):
                await stream.event(_delta(index, {"type": "text_delta", "text": piece}))
        else:
            await stream.event(_start(index, {**block, "input": {}}))
            arguments = json.dumps(block["input"])
            for n in range(0, len(arguments), 8):
                json_piece = {"type": "input_json_delta", "partial_json": arguments[n : n + 8]}
                await stream.event(_delta(index, json_piece))
        await stream.event({"type": "content_block_stop", "index": index})
    delta = {"stop_reason": message["stop_reason"], "stop_sequence": None}
    await stream.event({"type": "message_delta", "delta": delta, "usage": usage})
    await stream.event({"type": "message_stop"})
    return stream.response


def _start(index: int, block: dict[str, Any]) -> dict[str, Any]:
    return {"type": "content_block_start", "index": index, "content_block": block}


def _delta(index: int, delta: dict[str, Any]) -> dict[str, Any]:
    return {"type": "content_block_delta", "index": index, "delta": delta}
