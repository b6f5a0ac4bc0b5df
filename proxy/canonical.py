"""Canonical request bodies: same meaning, same key, whichever client sent it (docs/design.md §3).

One place decides which bodies mean the same; every key (whole answers, embedding items, the
semantic partition) is made of what `canonical_body` returns. The rules:

- Numbers compare by value: an integral float is its integer (LangChain's `temperature: 0.0`
  is the openai SDK's `0`), at any depth. `number` is the JSON decoder's `float_hook`, so this
  costs nothing in Python unless a body holds a float, and the decoded body handed to every
  handler already reads numbers by value. A float outside the 64-bit integer range stays a
  float (the key's msgpack cannot hold such an integer). Strings are never touched, so text
  that looks like a number stays text; `true`/`false` stay booleans (`0` is not `false`).
- A top-level `null` is an absent field, and so is a `null` field of a message object (the API
  reads `"name": null` or `"content": null` beside `tool_calls` as unset). A `null` anywhere
  else is kept: inside a JSON Schema (`tools`, `response_format`) `"default": null` says
  something.
- A top-level field set to a value that means "absent" on every OpenAI-compatible server is
  absent: the list is `MEANS_ABSENT`, and only values whose default no server replaces with
  the model's own (`temperature: 1` and `top_p: 1` are not in it: vLLM and others apply the
  model's generation config when those are absent).
- The non-semantic fields (`NON_SEMANTIC_FIELDS`) are left out.
- Input forms the API treats as one are one: for moderations a one-item list of a string is
  that string (embeddings key each input item on its own, proxy/handlers/embeddings_items.py); for
  Responses an `input` of one plain user message is its text.
- Responses' `store: false` counts (see `_responses_forms`), though `store` is non-semantic
  everywhere else.

A body that was already canonical (integers, no nulls, no means-absent values, no identity
fields, a moderation input given as a string) keys exactly as it did before these rules, so its
entries survive the upgrade.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from proxy.vocabulary import Endpoint

# Fields that never change the answer: delivery (`stream`, `stream_options`), who asked
# (`user`, `safety_identifier`; they choose the scope, not the entry), the upstream's own
# prompt caching hint (`prompt_cache_key`), and what the upstream stores about the call.
NON_SEMANTIC_FIELDS = frozenset(
    {
        "stream",
        "stream_options",
        "user",
        "safety_identifier",
        "prompt_cache_key",
        "metadata",
        "store",
    }
)

# field -> the value that means the field is absent. Compared by type as well as value, so
# `n: true` is not `n: 1` and `logprobs: 0` is not `logprobs: false`.
MEANS_ABSENT: dict[str, Any] = {
    "n": 1,
    "logprobs": False,
    "echo": False,  # completions
    "presence_penalty": 0,
    "frequency_penalty": 0,
}

_INT64 = 2**63
_MODERATIONS: str = Endpoint.MODERATIONS.value  # a plain str: an enum attribute costs ~100 ns
_RESPONSES: str = Endpoint.RESPONSES.value


def number(text: str) -> int | float:
    """A JSON float as the decoder reads it: its integer when integral and within 64 bits."""
    value = float(text)
    if value.is_integer() and -_INT64 <= value < _INT64:
        return int(value)
    return value


def canonical_body(endpoint: str, body: Mapping[str, Any]) -> dict[str, Any]:
    """The part of `body` a key is made of (its numbers already by value, see `number`).

    Runs on every request, hits included, so the common case (no null, nothing to drop) costs
    one comprehension and one C-level `None in values` per message."""
    canonical = {
        name: value
        for name, value in body.items()
        if name not in NON_SEMANTIC_FIELDS
        and value is not None
        and (name not in MEANS_ABSENT or not _means_absent(name, value))
    }
    messages = canonical.get("messages")
    if type(messages) is list:
        for message in messages:
            if type(message) is dict and None in message.values():
                canonical["messages"] = [_without_nulls(each) for each in messages]
                break
    if endpoint == _RESPONSES:
        _responses_forms(body, canonical)
    if endpoint == _MODERATIONS:
        text = canonical.get("input")
        if type(text) is list and len(text) == 1 and type(text[0]) is str:
            canonical["input"] = text[0]
    return canonical


def _responses_forms(body: Mapping[str, Any], canonical: dict[str, Any]) -> None:
    """The Responses API keeps a response (`store` defaults to true) so a later request can
    continue it by `previous_response_id`: an answer the upstream did not keep must not be
    served to a request that will continue it, so `store: false` keys apart. An `input` of one
    plain user message is that message's text, as the API reads a string `input`."""
    if body.get("store") is False:
        canonical["store"] = False
    items = canonical.get("input")
    if type(items) is list and len(items) == 1 and type(items[0]) is dict:
        only = items[0]
        if (
            only.get("role") == "user"
            and type(only.get("content")) is str
            and only.get("type", "message") == "message"
            and only.keys() <= _PLAIN_MESSAGE
        ):
            canonical["input"] = only["content"]


_PLAIN_MESSAGE = frozenset({"type", "role", "content"})


def _means_absent(name: str, value: Any) -> bool:
    absent = MEANS_ABSENT[name]
    return type(value) is type(absent) and value == absent


def _without_nulls(message: Any) -> Any:
    if type(message) is not dict:
        return message
    return {name: value for name, value in message.items() if value is not None}
