"""`POST /v1/responses` (the Responses API), plain JSON or its typed SSE events.

The text is chat's (the same words from a digest of the request), `previous_response_id` is
accepted (and, being in the digest, continues a chain with other words), and o-series and
gpt-5 models think first: a `reasoning` output item and `reasoning_tokens` in the usage.
`background: true` answers at once with a `queued` response, as the API does.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import msgspec
from aiohttp import web

from .catalog import check_model
from .content import (
    DEFAULT_REPLY_WORDS,
    MAX_REPLY_WORDS,
    MESSAGE_OVERHEAD_TOKENS,
    content_text,
    count_words,
    reply_words,
    request_seed,
)
from .inputs import Positive, convert, object_body
from .sse import SseStream
from .wire import FAKE_KEY, json_answer


class ResponsesParams(msgspec.Struct):
    model: str
    input: str | list[Any] | None = None
    instructions: str | None = None
    max_output_tokens: Positive | None = None
    stream: bool | None = None
    background: bool | None = None
    previous_response_id: str | None = None
    temperature: float | None = None


def _input_tokens(params: ResponsesParams) -> int:
    if isinstance(params.input, str):
        items: list[Any] = [{"content": params.input}]
    else:
        items = params.input or []
    tokens = sum(
        count_words(content_text(item.get("content"))) + MESSAGE_OVERHEAD_TOKENS
        for item in items
        if isinstance(item, dict)
    )
    return tokens + count_words(params.instructions or "")


def _thinks(model: str) -> bool:
    return model.startswith(("o1", "o3", "o4", "gpt-5"))


def _response(params: ResponsesParams, body: dict[str, Any]) -> dict[str, Any]:
    """The whole `response` object a `stream: false` request receives."""
    limit = params.max_output_tokens
    count = DEFAULT_REPLY_WORDS if limit is None else min(limit, MAX_REPLY_WORDS)
    words = reply_words(request_seed(body), 0, count)
    text = " ".join(words)
    reasoning = 2 * len(words) if _thinks(params.model) else 0
    output: list[dict[str, Any]] = []
    if reasoning:
        output.append({"id": "rs_" + uuid.uuid4().hex, "type": "reasoning", "summary": []})
    part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
    message = {
        "id": "msg_" + uuid.uuid4().hex,
        "type": "message",
        "status": "completed",
        "role": "assistant",
        "content": [part],
    }
    output.append(message)
    prompt = _input_tokens(params)
    completion = len(words) + reasoning
    return {
        "id": "resp_" + uuid.uuid4().hex,
        "object": "response",
        "created_at": int(time.time()),
        "status": "completed",
        "error": None,
        "incomplete_details": None,
        "instructions": params.instructions,
        "max_output_tokens": limit,
        "model": params.model,
        "output": output,
        "parallel_tool_calls": True,
        "previous_response_id": params.previous_response_id,
        "store": body.get("store", True),
        "temperature": 1.0 if params.temperature is None else params.temperature,
        "text": {"format": {"type": "text"}},
        "tool_choice": "auto",
        "tools": [],
        "top_p": 1.0,
        "truncation": "disabled",
        "usage": {
            "input_tokens": prompt,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": completion,
            "output_tokens_details": {"reasoning_tokens": reasoning},
            "total_tokens": prompt + completion,
        },
        "user": None,
        "metadata": body.get("metadata") or {},
    }


async def responses(request: web.Request) -> web.StreamResponse:
    fake = request.app[FAKE_KEY]
    body = object_body(request)
    params = convert(body, ResponsesParams)
    check_model(fake, params.model)
    response = _response(params, body)
    if params.background:
        queued = {**response, "status": "queued", "output": [], "usage": None}
        return json_answer(request, {**queued, "background": True})
    if not params.stream:
        return json_answer(request, response)
    stream = SseStream(request, fake)
    await stream.open()
    events = _events(response)
    for event in events:
        await stream.send_typed(event)
    return await stream.finish(done=False)


def _events(response: dict[str, Any]) -> list[dict[str, Any]]:
    """The stream of `response`, the text word by word (as the API sends it, in pieces)."""
    events: list[dict[str, Any]] = []

    def add(kind: str, **fields: Any) -> None:
        events.append({"type": kind, "sequence_number": len(events), **fields})

    opening = {**response, "status": "in_progress", "output": [], "usage": None}
    add("response.created", response=opening)
    add("response.in_progress", response=opening)
    for index, item in enumerate(response["output"]):
        if item["type"] != "message":
            add("response.output_item.added", output_index=index, item=item)
            add("response.output_item.done", output_index=index, item=item)
            continue
        started = {**item, "status": "in_progress", "content": []}
        add("response.output_item.added", output_index=index, item=started)
        part = item["content"][0]
        where = {"item_id": item["id"], "output_index": index, "content_index": 0}
        add("response.content_part.added", **where, part={**part, "text": ""})
        for n, word in enumerate(part["text"].split(" ")):
            add("response.output_text.delta", **where, delta=word if n == 0 else " " + word)
        add("response.output_text.done", **where, text=part["text"], logprobs=[])
        add("response.content_part.done", **where, part=part)
        add("response.output_item.done", output_index=index, item=item)
    add("response.completed", response=response)
    return events
