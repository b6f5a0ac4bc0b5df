"""Anthropic Messages streams (proxy/cache/streams.py): between a whole `message` object and the
event sequence `message_start`, `content_block_start`, `ping`, `content_block_delta`,
`content_block_stop`, `message_delta`, `message_stop`, each sent as `event: <type>` then
`data: <json>` (the type is also the data's own `type`, which is what is read here).

A streamed miss is whole once `message_stop` arrives; an `error` event breaks it. A stored
message replays as the full sequence, `event:` lines included, which is what the anthropic SDK's
`messages.create(stream=True)` and `messages.stream(...)` parse.
"""

from __future__ import annotations

from typing import Any

import msgspec

from proxy.cache.streams import Fed

MESSAGE = "message"  # the kind, and the stored answer's own `type`

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode
# What each delta type appends to, in its content block.
_DELTA_FIELDS = {
    "text_delta": "text",
    "thinking_delta": "thinking",
    "signature_delta": "signature",
}


def message_event(payload: dict[str, Any]) -> bytes:
    """One event as Anthropic sends it: its type on an `event:` line, then its data."""
    return b"event: " + str(payload["type"]).encode() + b"\ndata: " + _encode(payload) + b"\n\n"


def error_event(body: bytes) -> bytes:
    """An Anthropic error body (`{"type": "error", ...}`) as the stream's `error` event."""
    return b"event: error\ndata: " + body + b"\n\n"


class MessageStream:
    """The `StreamFormat` of `/v1/messages`."""

    kind = MESSAGE

    def assembly(self) -> MessageAssembly:
        return MessageAssembly()

    def owns(self, answer: dict[str, Any]) -> bool:
        return answer.get("type") == MESSAGE

    def replay(self, answer: dict[str, Any], include_usage: bool) -> bytes:
        return b"".join(message_event(event) for event in replay_events(answer))


class MessageAssembly:
    def __init__(self) -> None:
        self._message: dict[str, Any] | None = None
        self._json: dict[int, str] = {}  # a tool_use block's input, as its pieces arrive
        self._done = self._broken = False

    def feed(self, data: bytes) -> Fed:
        event = _event(data)
        if event is None or event.get("type") == "error":
            self._broken = True
            return Fed.BROKEN
        kind = event.get("type")
        try:
            if kind == "message_start":
                self._message = {**event["message"], "content": []}
            elif kind == "message_stop":
                self._done = True
                return Fed.DONE
            elif self._message is not None:
                self._apply(self._message, kind, event)
        except (KeyError, TypeError, IndexError, AttributeError, msgspec.DecodeError):
            self._broken = True
            return Fed.BROKEN
        return Fed.PART  # `ping` and event types this version does not know included

    def _apply(self, message: dict[str, Any], kind: Any, event: dict[str, Any]) -> None:
        content: list[dict[str, Any]] = message["content"]
        if kind == "content_block_start":
            index = event["index"]
            while len(content) <= index:
                content.append({})
            content[index] = dict(event["content_block"])
        elif kind == "content_block_delta":
            block, delta = content[event["index"]], event["delta"]
            dtype = delta.get("type")
            if dtype == "input_json_delta":
                self._json[event["index"]] = self._json.get(event["index"], "") + delta.get(
                    "partial_json", ""
                )
            elif dtype == "citations_delta":
                block.setdefault("citations", []).append(delta["citation"])
            elif dtype in _DELTA_FIELDS:
                field = _DELTA_FIELDS[dtype]
                block[field] = (block.get(field) or "") + delta.get(field, "")
        elif kind == "content_block_stop":
            index = event["index"]
            pieces = self._json.pop(index, None)
            if pieces is not None:
                content[index]["input"] = _decode(pieces) if pieces else {}
        elif kind == "message_delta":
            for field, value in (event.get("delta") or {}).items():
                message[field] = value
            usage = dict(message.get("usage") or {})
            usage.update({k: v for k, v in (event.get("usage") or {}).items() if v is not None})
            message["usage"] = usage

    def whole(self) -> dict[str, Any] | None:
        message = self._message
        if not self._done or self._broken or message is None or self._json:
            return None
        return message


def _event(data: bytes) -> dict[str, Any] | None:
    try:
        event = _decode(data)
    except msgspec.DecodeError:
        return None
    return event if isinstance(event, dict) else None


def replay_events(answer: dict[str, Any]) -> list[dict[str, Any]]:
    """The events of a stored message, as the upstream would have streamed them."""
    usage = dict(answer.get("usage") or {})
    head = {
        **answer,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {**usage, "output_tokens": 0},
    }
    events: list[dict[str, Any]] = [
        {"type": "message_start", "message": head},
        {"type": "ping"},
    ]
    for index, block in enumerate(answer.get("content") or ()):
        events.extend(_block_events(index, block))
    delta = {"stop_reason": answer.get("stop_reason"), "stop_sequence": answer.get("stop_sequence")}
    events.append(
        {
            "type": "message_delta",
            "delta": delta,
            "usage": {"output_tokens": usage.get("output_tokens", 0)},
        }
    )
    events.append({"type": "message_stop"})
    return events


def _block_events(index: int, block: dict[str, Any]) -> list[dict[str, Any]]:
    kind = block.get("type")
    deltas: list[dict[str, Any]] = []
    start = dict(block)
    if kind == "text":
        start["text"] = ""
        start.pop("citations", None)
        for citation in block.get("citations") or ():
            deltas.append({"type": "citations_delta", "citation": citation})
        if block.get("text"):
            deltas.insert(0, {"type": "text_delta", "text": block["text"]})
    elif kind in ("tool_use", "server_tool_use"):
        start["input"] = {}
        deltas.append(
            {"type": "input_json_delta", "partial_json": _encode(block.get("input", {})).decode()}
        )
    elif kind == "thinking":
        start["thinking"], start["signature"] = "", ""
        deltas.append({"type": "thinking_delta", "thinking": block.get("thinking", "")})
        deltas.append({"type": "signature_delta", "signature": block.get("signature", "")})
    # Any other block (redacted_thinking, tool results) arrives whole in its start event.
    return [
        {"type": "content_block_start", "index": index, "content_block": start},
        *({"type": "content_block_delta", "index": index, "delta": d} for d in deltas),
        {"type": "content_block_stop", "index": index},
    ]
