"""What of a chat, Responses or Messages request the semantic cache compares, and what must
match exactly.

Only the text of the last message, when it is the user's, is embedded; everything else of the
body (model, every semantic field, every earlier message, the last message's other fields) is
the partition, matched exactly (docs/design.md §10). A request whose last message is not plain
user text (a tool result, an image) has no question and is never looked up semantically.

A chat request's messages are its `messages`; a Responses request's are its `input` (a string
is one user message; its `instructions`, `previous_response_id` and `conversation` are in the
partition like any other field). Anthropic's Messages are chat's shape (`messages`, text parts
of type `text`; `system` is in the partition). Only these endpoints are looked up semantically.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

# Longer questions are rarely repeated in other words, and embedding them costs more.
MAX_QUESTION_CHARS = 2000


class Question(NamedTuple):
    text: str  # the last user message's text, as sent
    rest: dict[str, Any]  # the body with that text taken out: the partition's part of it


def split_question(body: Mapping[str, Any]) -> Question | None:
    field, part_type = "messages", "text"
    messages = body.get(field)
    if messages is None and "input" in body:  # the Responses API
        field, part_type = "input", "input_text"
        messages = body["input"]
        if isinstance(messages, str):
            messages = [{"role": "user", "content": messages}]
    if not isinstance(messages, list) or not messages:
        return None
    last = messages[-1]
    if not isinstance(last, dict) or last.get("role") != "user":
        return None
    text = _text_of(last.get("content"), part_type)
    if text is None or not text.strip() or len(text) > MAX_QUESTION_CHARS:
        return None
    rest = dict(body)
    rest[field] = [*messages[:-1], {k: v for k, v in last.items() if k != "content"}]
    return Question(text, rest)


def _text_of(content: Any, part_type: str) -> str | None:
    """A string, or a list of text parts only (any image or audio part: no question)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list) or not content:
        return None
    texts = []
    for part in content:
        if not isinstance(part, dict) or part.get("type") != part_type:
            return None
        text = part.get("text")
        if not isinstance(text, str):
            return None
        texts.append(text)
    return "\n".join(texts)
