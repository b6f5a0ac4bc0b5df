"""The Responses API stream (proxy/cache/streams.py): typed events (`response.created` …
`response.output_text.delta` … `response.completed`), each with its `sequence_number`.

A streamed miss is whole once `response.completed` arrives: its `response` is exactly what a
`stream: false` request receives, so that object is what is stored. `response.failed`,
`response.incomplete`, an `error` event or a stream that ends before `response.completed`
store nothing. A stored response replays as the event sequence the openai SDK's
`client.responses.stream(...)` and `create(stream=True)` read: each output item added and
done, a message's text parts as one delta each, the response id and every field kept.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import msgspec

from proxy.cache.streams import Fed

RESPONSES = "response"  # the stored answer's `object`, and the stream format's kind

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode
_COMPLETED = "response.completed"
_NOT_WHOLE = frozenset({"response.failed", "response.incomplete", "error"})


class ResponsesStream:
    """The `StreamFormat` of `POST /v1/responses`."""

    kind = RESPONSES

    def assembly(self) -> ResponsesAssembly:
        return ResponsesAssembly()

    def owns(self, answer: dict[str, Any]) -> bool:
        return answer.get("object") == RESPONSES

    def replay(self, answer: dict[str, Any], include_usage: bool) -> bytes:
        """`include_usage` is chat's; a Responses stream always ends with its usage."""
        return b"".join(_event(event) for event in replay_events(answer))


class ResponsesAssembly:
    def __init__(self) -> None:
        self._response: dict[str, Any] | None = None
        self._broken = False

    def feed(self, data: bytes) -> Fed:
        try:
            event = _decode(data)
        except msgspec.DecodeError:
            event = None
        kind = event.get("type") if isinstance(event, dict) else None
        if not isinstance(kind, str) or kind in _NOT_WHOLE:
            self._broken = True
            return Fed.BROKEN
        if kind == _COMPLETED:
            response = event.get("response") if isinstance(event, dict) else None
            if not isinstance(response, dict):
                self._broken = True
                return Fed.BROKEN
            self._response = response
            return Fed.DONE
        return Fed.PART

    def whole(self) -> dict[str, Any] | None:
        return None if self._broken else self._response


def _event(event: dict[str, Any]) -> bytes:
    name: str = event["type"]
    return b"event: " + name.encode() + b"\ndata: " + _encode(event) + b"\n\n"


def replay_events(answer: dict[str, Any]) -> list[dict[str, Any]]:
    """The events of a stored response, numbered from 0, as the upstream streams them."""
    events: list[dict[str, Any]] = []

    def add(kind: str, **fields: Any) -> None:
        events.append({"type": kind, "sequence_number": len(events), **fields})

    opening = {**answer, "status": "in_progress", "output": [], "usage": None}
    add("response.created", response=opening)
    add("response.in_progress", response=opening)
    for index, item in enumerate(answer.get("output") or ()):
        if not isinstance(item, dict):
            continue
        if item.get("type") != "message":
            add("response.output_item.added", output_index=index, item=item)
            add("response.output_item.done", output_index=index, item=item)
            continue
        item_id = item.get("id")
        started = {**copy.deepcopy(item), "status": "in_progress", "content": []}
        add("response.output_item.added", output_index=index, item=started)
        place = {"item_id": item_id, "output_index": index}
        for part_index, part in enumerate(item.get("content") or ()):
            where = {**place, "content_index": part_index}
            _replay_part(add, where, part)
        add("response.output_item.done", output_index=index, item=item)
    add(_COMPLETED, response=answer)
    return events


def _replay_part(add: Callable[..., None], where: dict[str, Any], part: Any) -> None:
    """One content part of a message: added empty, its text as one delta, then done."""
    kind = part.get("type") if isinstance(part, dict) else None
    if kind == "output_text":
        text = part.get("text") or ""
        logprobs = part.get("logprobs") or []
        add("response.content_part.added", **where, part={**part, "text": "", "logprobs": []})
        add("response.output_text.delta", **where, delta=text, logprobs=logprobs)
        add("response.output_text.done", **where, text=text, logprobs=logprobs)
    elif kind == "refusal":
        refusal = part.get("refusal") or ""
        add("response.content_part.added", **where, part={**part, "refusal": ""})
        add("response.refusal.delta", **where, delta=refusal)
        add("response.refusal.done", **where, refusal=refusal)
    else:
        add("response.content_part.added", **where, part=part)
    add("response.content_part.done", **where, part=part)
