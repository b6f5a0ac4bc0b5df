"""Chat and legacy completions streams (proxy/cache/streams.py): between the two shapes of a
generative answer, a whole JSON object and a stream of chunks ended by `data: [DONE]`.

`assemble` turns the chunks of a streamed miss into the object a `stream: false` request would
have received (that is what is stored); `replay` turns a stored object back into chunks for a
streamed hit, so both shapes are served from one entry.
"""

from __future__ import annotations

from typing import Any

import msgspec

from proxy.cache.streams import Fed
from proxy.sse import DONE, format_event

CHAT = "chat.completion"
TEXT = "text_completion"


def assemble(chunks: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    """The whole answer from its chunks (chat.completion.chunk or text_completion)."""
    first = chunks[0]
    choices: dict[int, dict[str, Any]] = {}
    usage = None
    for chunk in chunks:
        if chunk.get("usage"):
            usage = chunk["usage"]
        for part in chunk.get("choices") or ():
            index = part.get("index", 0)
            choice = choices.setdefault(index, _empty_choice(index, kind))
            if kind == CHAT:
                _merge_delta(choice["message"], part.get("delta") or {})
            else:
                choice["text"] += part.get("text") or ""
            if part.get("finish_reason") is not None:
                choice["finish_reason"] = part["finish_reason"]
            if part.get("logprobs"):
                _merge_logprobs(choice, part["logprobs"])
    answer: dict[str, Any] = {
        "id": first.get("id"),
        "object": kind,
        "created": first.get("created"),
        "model": first.get("model"),
        "choices": [choices[i] for i in sorted(choices)],
    }
    for optional in ("system_fingerprint", "service_tier"):
        if first.get(optional) is not None:
            answer[optional] = first[optional]
    if usage is not None:
        answer["usage"] = usage
    return answer


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode


class ChunkStream:
    """The `StreamFormat` of chat (`CHAT`) or legacy completions (`TEXT`)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def assembly(self) -> ChunkAssembly:
        return ChunkAssembly(self.kind)

    def owns(self, answer: dict[str, Any]) -> bool:
        return answer.get("object") == self.kind

    def replay(self, answer: dict[str, Any], include_usage: bool) -> bytes:
        chunks = replay(answer, include_usage)
        return b"".join(format_event(_encode(chunk)) for chunk in chunks) + DONE


class ChunkAssembly:
    def __init__(self, kind: str) -> None:
        self._kind = kind
        self._chunks: list[dict[str, Any]] = []
        self._done = self._broken = False

    def feed(self, data: bytes) -> Fed:
        if data == b"[DONE]":
            self._done = True
            return Fed.DONE
        chunk = _chunk(data)
        if chunk is None:
            self._broken = True
            return Fed.BROKEN
        self._chunks.append(chunk)
        return Fed.USAGE_ONLY if not chunk.get("choices") and chunk.get("usage") else Fed.PART

    def whole(self) -> dict[str, Any] | None:
        if not self._done or self._broken or not self._chunks:
            return None
        return assemble(self._chunks, self._kind)


def _chunk(data: bytes) -> dict[str, Any] | None:
    try:
        chunk = _decode(data)
    except msgspec.DecodeError:
        return None
    return chunk if isinstance(chunk, dict) and "error" not in chunk else None


def replay(answer: dict[str, Any], include_usage: bool) -> list[dict[str, Any]]:
    """The chunks of a stored answer, as the upstream would have streamed them."""
    chat = answer.get("object") == CHAT
    head = {
        "id": answer.get("id"),
        "object": "chat.completion.chunk" if chat else TEXT,
        "created": answer.get("created"),
        "model": answer.get("model"),
    }
    for optional in ("system_fingerprint", "service_tier"):
        if answer.get(optional) is not None:
            head[optional] = answer[optional]
    tail: dict[str, Any] = {"usage": None} if include_usage else {}
    chunks: list[dict[str, Any]] = []
    for choice in answer.get("choices") or ():
        index = choice.get("index", 0)
        logprobs = choice.get("logprobs")
        if chat:
            message = choice.get("message") or {}
            # OpenAI opens with content "" for a text answer and null for a tool-call (or
            # refusal) answer; the assembled hit must keep the miss's null.
            content = "" if isinstance(message.get("content"), str) else None
            opening = {"role": message.get("role", "assistant"), "content": content}
            chunks.append({**head, "choices": [_part(index, opening)], **tail})
            delta = {k: v for k, v in message.items() if k != "role" and v is not None}
            if "tool_calls" in delta:
                delta["tool_calls"] = [
                    {"index": i, **call} for i, call in enumerate(delta["tool_calls"])
                ]
            if delta:
                chunks.append({**head, "choices": [_part(index, delta, logprobs)], **tail})
            closing = _part(index, {}, finish_reason=choice.get("finish_reason"))
        else:
            text = {
                "index": index,
                "text": choice.get("text", ""),
                "logprobs": logprobs,
                "finish_reason": None,
            }
            chunks.append({**head, "choices": [text], **tail})
            closing = {
                "index": index,
                "text": "",
                "logprobs": None,
                "finish_reason": choice.get("finish_reason"),
            }
        chunks.append({**head, "choices": [closing], **tail})
    if include_usage:
        chunks.append({**head, "choices": [], "usage": answer.get("usage")})
    return chunks


def _part(
    index: int, delta: dict[str, Any], logprobs: Any = None, finish_reason: str | None = None
) -> dict[str, Any]:
    return {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}


def _empty_choice(index: int, kind: str) -> dict[str, Any]:
    if kind == CHAT:
        message = {"role": "assistant", "content": None, "refusal": None}
        return {"index": index, "message": message, "logprobs": None, "finish_reason": None}
    return {"index": index, "text": "", "logprobs": None, "finish_reason": None}


def _merge_delta(message: dict[str, Any], delta: dict[str, Any]) -> None:
    for field, value in delta.items():
        if value is None:
            continue
        if field == "role":
            message["role"] = value
        elif field in ("content", "refusal"):
            message[field] = (message.get(field) or "") + value
        elif field == "tool_calls":
            _merge_tool_calls(message.setdefault("tool_calls", []), value)
        else:
            message[field] = value  # e.g. audio, annotations: last one wins


def _merge_tool_calls(calls: list[dict[str, Any]], deltas: list[dict[str, Any]]) -> None:
    for delta in deltas:
        position = delta.get("index", len(calls))
        while len(calls) <= position:
            calls.append(
                {"id": None, "type": "function", "function": {"name": "", "arguments": ""}}
            )
        call = calls[position]
        if delta.get("id"):
            call["id"] = delta["id"]
        if delta.get("type"):
            call["type"] = delta["type"]
        function = delta.get("function") or {}
        call["function"]["name"] += function.get("name") or ""
        call["function"]["arguments"] += function.get("arguments") or ""


def _merge_logprobs(choice: dict[str, Any], logprobs: dict[str, Any]) -> None:
    merged = choice["logprobs"] or {}
    for field, values in logprobs.items():
        if isinstance(values, list):
            merged[field] = (merged.get(field) or []) + values
        elif values is not None:
            merged[field] = values
        else:
            merged.setdefault(field, None)  # e.g. chat's `"refusal": null`, kept as sent
    choice["logprobs"] = merged
