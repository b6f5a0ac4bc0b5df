"""Message content on spans, only with OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true:
the request's last user message and the answer's text (a stream's from the whole the sidecar
assembles to store it), as span events `gen_ai.user.message` and `gen_ai.choice`, each cut to
CONTENT_LIMIT characters. Best effort: a compressed or unreadable body is left out rather than
decoded twice."""

from __future__ import annotations

from typing import Any

import msgspec
from aiohttp import web

from proxy.tracing import CONTENT_LIMIT, Tracer


def capture_answer(tracer: Tracer, request: web.Request, body: bytes | None) -> None:
    """`body`: the answer's whole JSON (spans.answer_body), a stream's as assembled."""
    if not tracer.capture_content:
        return
    sent = getattr(request, "_read_bytes", None)  # aiohttp's copy of the body it read
    if isinstance(sent, bytes) and "Content-Encoding" not in request.headers:
        asked = _last_user_text(_decode(sent))
        if asked:
            tracer.event("gen_ai.user.message", {"content": asked[:CONTENT_LIMIT]})
    if body is not None:
        said = _answer_text(_decode(body))
        if said:
            tracer.event("gen_ai.choice", {"content": said[:CONTENT_LIMIT]})


def _decode(raw: bytes) -> Any:
    try:
        return msgspec.json.decode(raw)
    except msgspec.DecodeError:
        return None


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts
        return " ".join(
            part["text"] for part in content if isinstance(part, dict) and "text" in part
        )
    return ""


def _last_user_text(body: Any) -> str:
    if not isinstance(body, dict):
        return ""
    messages = body.get("messages")
    if isinstance(messages, list):
        for message in reversed(messages):
            if isinstance(message, dict) and message.get("role") == "user":
                return _text(message.get("content"))
        return ""
    for field in ("input", "prompt"):  # responses, completions, embeddings
        value = body.get(field)
        if isinstance(value, str):
            return value
    return ""


def _answer_text(body: Any) -> str:
    if not isinstance(body, dict):
        return ""
    choices = body.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        choice = choices[0]
        message = choice.get("message")
        if isinstance(message, dict):
            return _text(message.get("content"))
        return _text(choice.get("text"))
    if body.get("type") == "message":  # Anthropic
        return _text(body.get("content"))
    return _text(body.get("output_text"))
