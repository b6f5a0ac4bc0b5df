"""Tool calls the fake answers: which functions it calls, and arguments derived from the request.

A request with `tools` gets tool calls when `tool_choice` is "required" or names a function
(or is "auto"/absent while the `prefer_tools` knob is on); otherwise it gets text, as before.
Arguments are a pure function of the request, so a cache in front can be checked byte for byte.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from typing import Any

from .content import count_words
from .wire import FakeApiError

_MAX_DEPTH = 4
_FRAGMENT = re.compile(r"\w+|\W+")
_WORDS = ("Paris", "London", "blue", "north", "today", "celsius", "lesson", "review", "step")


def _functions(tools: list[Any]) -> list[dict[str, Any]]:
    """The `function` objects of the function tools, in order."""
    out = []
    for tool in tools:
        if isinstance(tool, dict) and tool.get("type", "function") == "function":
            function = tool.get("function")
            if isinstance(function, dict) and isinstance(function.get("name"), str):
                out.append(function)
    return out


def chosen_functions(
    tools: list[Any] | None,
    tool_choice: Any,
    parallel: bool | None,
    prefer_tools: bool,
) -> tuple[list[dict[str, Any]], str]:
    """(functions to call, finish_reason); no functions means answer text."""
    if not tools:
        if tool_choice is not None:
            raise FakeApiError(
                400,
                "Invalid value for 'tool_choice': 'tool_choice' is only allowed when 'tools' "
                "are specified.",
                param="tool_choice",
            )
        return [], "stop"
    functions = _functions(tools)
    if isinstance(tool_choice, dict):
        name = (tool_choice.get("function") or {}).get("name")
        named = [f for f in functions if f["name"] == name]
        if not named:
            raise FakeApiError(
                400,
                f"Invalid value for 'tool_choice': function '{name}' is not among the tools.",
                param="tool_choice",
            )
        # OpenAI ends a call forced by name with finish_reason "stop", not "tool_calls".
        return named[:1], "stop"
    wanted = tool_choice == "required" or (tool_choice in (None, "auto") and prefer_tools)
    if not wanted or not functions:
        return [], "stop"
    return (functions if parallel is not False else functions[:1]), "tool_calls"


def _unit(seed: bytes, path: str) -> int:
    return int.from_bytes(hashlib.sha256(seed + path.encode()).digest()[:4], "little")


def _value(schema: Any, seed: bytes, path: str, depth: int) -> Any:
    """A value that fits the JSON schema's type, picked deterministically."""
    if not isinstance(schema, dict) or depth > _MAX_DEPTH:
        return None
    pick = _unit(seed, path)
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        return enum[pick % len(enum)]
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), None)
    if kind == "object" or (kind is None and "properties" in schema):
        properties = schema.get("properties")
        if not isinstance(properties, dict):
            return {}
        return {
            name: _value(sub, seed, f"{path}.{name}", depth + 1) for name, sub in properties.items()
        }
    if kind == "array":
        return [_value(schema.get("items"), seed, path + "[0]", depth + 1)]
    if kind == "integer":
        return pick % 100
    if kind == "number":
        return (pick % 10000) / 100
    if kind == "boolean":
        return pick % 2 == 0
    if kind == "string":
        return _WORDS[pick % len(_WORDS)]
    return None


def tool_calls(seed: bytes, choice: int, functions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One call per function, as OpenAI's message.tool_calls (ids are fresh, like OpenAI's)."""
    calls = []
    for function in functions:
        path = f"{choice}:{function['name']}"
        arguments = _value(function.get("parameters") or {"type": "object"}, seed, path, 0)
        calls.append(
            {
                "id": "call_" + uuid.uuid4().hex[:24],
                "type": "function",
                "function": {
                    "name": function["name"],
                    "arguments": json.dumps(arguments, separators=(",", ":"), ensure_ascii=False),
                },
            }
        )
    return calls


def call_tokens(calls: list[dict[str, Any]]) -> int:
    """Completion tokens of a tool-call answer: a few per call plus its argument fragments."""
    return sum(
        3 + count_words(c["function"]["name"]) + len(fragments(c["function"]["arguments"]))
        for c in calls
    )


def fragments(arguments: str) -> list[str]:
    """The pieces OpenAI streams a call's arguments in (words and runs of punctuation)."""
    return _FRAGMENT.findall(arguments)


def call_deltas(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The `delta`s of a streamed tool-call answer, chunked as OpenAI streams them: the first
    names call 0 with empty arguments (with role and content null), each later call opens with
    its index, id and name, and the arguments follow in fragments."""
    deltas: list[dict[str, Any]] = []
    for index, call in enumerate(calls):
        opening = {
            "index": index,
            "id": call["id"],
            "type": "function",
            "function": {"name": call["function"]["name"], "arguments": ""},
        }
        if index == 0:
            head = {"role": "assistant", "content": None, "tool_calls": [opening]}
            deltas.append({**head, "refusal": None})
        else:
            deltas.append({"tool_calls": [opening]})
        for piece in fragments(call["function"]["arguments"]):
            deltas.append({"tool_calls": [{"index": index, "function": {"arguments": piece}}]})
    return deltas
