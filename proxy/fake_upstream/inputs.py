"""The parts of OpenAI request bodies the fake reads, validated into OpenAI-style 400s."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, TypeVar

import msgspec
from aiohttp import web

from .wire import FakeApiError

MAX_EMBEDDING_INPUTS = 2048
MAX_EMBEDDING_DIMENSIONS = 3072

_T = TypeVar("_T")
_FIELD = re.compile(r"(?:at `\$\.|field `)([A-Za-z_]+)")

Positive = Annotated[int, msgspec.Meta(ge=1)]


class ParsedBody(msgspec.Struct, frozen=True):
    """A request body decoded once by the middleware; `error` is set when it was not JSON."""

    value: Any | None
    error: str | None = None


BODY_KEY = web.RequestKey("fake_body", ParsedBody)


class StreamOptions(msgspec.Struct):
    include_usage: bool | None = None


class ChatParams(msgspec.Struct):
    model: str
    messages: Annotated[list[dict[str, Any]], msgspec.Meta(min_length=1)]
    n: Annotated[int, msgspec.Meta(ge=1, le=128)] | None = None
    max_tokens: Positive | None = None
    max_completion_tokens: Positive | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    tools: list[Any] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, msgspec.Meta(ge=0, le=20)] | None = None
    service_tier: Literal["auto", "default", "flex", "scale", "priority"] | None = None


class CompletionParams(msgspec.Struct):
    model: str
    prompt: Any
    n: Annotated[int, msgspec.Meta(ge=1, le=128)] | None = None
    max_tokens: Positive | None = None
    logprobs: Annotated[int, msgspec.Meta(ge=0, le=5)] | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None


class EmbeddingParams(msgspec.Struct):
    model: Annotated[str, msgspec.Meta(min_length=1)]
    input: Any
    dimensions: Annotated[int, msgspec.Meta(ge=1, le=MAX_EMBEDDING_DIMENSIONS)] | None = None
    encoding_format: Literal["float", "base64"] | None = None


class ModerationParams(msgspec.Struct):
    input: Any
    model: Annotated[str, msgspec.Meta(min_length=1)] = "omni-moderation-latest"


def object_body(request: web.Request) -> dict[str, Any]:
    """The request's JSON object, or a 400 like OpenAI's for anything else."""
    parsed = request[BODY_KEY]
    if parsed.error is not None or not isinstance(parsed.value, dict):
        raise FakeApiError(
            400,
            "We could not parse the JSON body of your request. (HINT: This likely means you "
            "aren't using your HTTP library correctly. The OpenAI API expects a JSON payload.)",
        )
    return parsed.value


def convert(body: dict[str, Any], kind: type[_T]) -> _T:
    try:
        return msgspec.convert(body, kind)
    except msgspec.ValidationError as err:
        match = _FIELD.search(str(err))
        raise FakeApiError(
            400, f"Invalid request: {err}", param=match.group(1) if match else None
        ) from err


def is_stream(stream: bool | None, options: StreamOptions | None) -> tuple[bool, bool]:
    """(streaming, include_usage); stream_options without stream is a 400 as on OpenAI."""
    if options is not None and not stream:
        raise FakeApiError(
            400,
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
            param="stream_options",
        )
    return bool(stream), bool(stream and options and options.include_usage)


def _is_token(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_token_array(value: Any) -> bool:
    return isinstance(value, list) and all(_is_token(t) for t in value)


def input_items(value: Any, param: str) -> list[str | list[int]]:
    """A string, list of strings, one token array or a list of token arrays, as a list of items."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        if value and _is_token_array(value):
            return [value]
        items: list[str | list[int]] = []
        for index, item in enumerate(value):
            if not (isinstance(item, str) or _is_token_array(item)):
                raise FakeApiError(
                    400,
                    f"{param}[{index}] is invalid: expected a string or an array of tokens.",
                    param=param,
                )
            items.append(item)
        return items
    raise FakeApiError(
        400,
        f"'$.{param}' is invalid: expected a string, an array of strings, an array of tokens "
        "or an array of token arrays.",
        param=param,
    )


def check_items(items: list[str | list[int]], marker: str, *, allow_empty: bool = False) -> None:
    """400 naming the first empty item or item that contains the bad-input marker."""
    if not items:
        raise FakeApiError(400, "'$.input' is invalid: the input must not be empty.", param="input")
    for index, item in enumerate(items):
        if not allow_empty and len(item) == 0:
            raise FakeApiError(
                400, f"input[{index}] is invalid: it must not be empty.", param="input"
            )
        if isinstance(item, str) and marker in item:
            raise FakeApiError(
                400,
                f"input[{index}] is invalid: it contains the marker {marker!r}.",
                param="input",
            )
