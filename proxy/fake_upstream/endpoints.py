"""Embeddings, moderations, the model list and the 404 for every other /v1 path."""

from __future__ import annotations

import uuid
from typing import Any

from aiohttp import web

from .catalog import check_model, model_ids, model_object
from .content import (
    DEFAULT_EMBEDDING_DIMENSIONS,
    embedding_vector,
    encode_base64,
    item_tokens,
    moderation_result,
)
from .inputs import (
    MAX_EMBEDDING_INPUTS,
    EmbeddingParams,
    ModerationParams,
    check_items,
    convert,
    input_items,
    object_body,
)
from .wire import FAKE_KEY, FakeApiError, json_answer


async def embeddings(request: web.Request) -> web.Response:
    fake = request.app[FAKE_KEY]
    params = convert(object_body(request), EmbeddingParams)
    check_model(fake, params.model)
    items = input_items(params.input, "input")
    fake.embedding_inputs_per_call.append(len(items))
    if len(items) > MAX_EMBEDDING_INPUTS:
        raise FakeApiError(
            400,
            f"'$.input' is invalid: at most {MAX_EMBEDDING_INPUTS} inputs per request, "
            f"got {len(items)}.",
            param="input",
        )
    check_items(items, fake.bad_input_marker)
    dimensions = params.dimensions or DEFAULT_EMBEDDING_DIMENSIONS
    as_base64 = params.encoding_format == "base64"
    data = []
    for index, item in enumerate(items):
        vector = embedding_vector(params.model, dimensions, item)
        encoded: str | list[float] = encode_base64(vector) if as_base64 else vector
        data.append({"object": "embedding", "index": index, "embedding": encoded})
    tokens = sum(map(item_tokens, items))
    payload = {
        "object": "list",
        "data": data,
        "model": params.model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
    return json_answer(request, payload)


def _moderation_inputs(value: Any) -> list[tuple[str, bool]]:
    """(text, has_image) per result: strings each get one; a list of parts is one input."""
    if isinstance(value, str):
        return [(value, False)]
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        texts: list[str] = []
        has_image = False
        for index, part in enumerate(value):
            kind = part.get("type")
            if kind == "text" and isinstance(part.get("text"), str):
                texts.append(part["text"])
            elif kind == "image_url":
                has_image = True
            else:
                raise FakeApiError(
                    400, f"input[{index}] is invalid: unknown content part.", param="input"
                )
        return [(" ".join(texts), has_image)]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return [(v, False) for v in value]
    raise FakeApiError(
        400,
        "'$.input' is invalid: expected a string, an array of strings or an array of "
        "multi-modal parts.",
        param="input",
    )


async def moderations(request: web.Request) -> web.Response:
    fake = request.app[FAKE_KEY]
    params = convert(object_body(request), ModerationParams)
    check_model(fake, params.model)
    inputs = _moderation_inputs(params.input)
    fake.moderation_inputs_per_call.append(len(inputs))
    check_items([text for text, _ in inputs], fake.bad_input_marker, allow_empty=True)
    payload = {
        "id": "modr-" + uuid.uuid4().hex,
        "model": params.model,
        "results": [moderation_result(text, has_image) for text, has_image in inputs],
    }
    return json_answer(request, payload)


async def list_models(request: web.Request) -> web.Response:
    fake = request.app[FAKE_KEY]
    data = [model_object(fake, m) for m in model_ids(fake)]
    return json_answer(request, {"object": "list", "data": data})


async def get_model(request: web.Request) -> web.Response:
    fake = request.app[FAKE_KEY]
    model_id = request.match_info["model_id"]
    if model_id not in model_ids(fake):
        raise FakeApiError(
            404,
            f"The model '{model_id}' does not exist",
            param="model",
            code="model_not_found",
        )
    return json_answer(request, model_object(fake, model_id))


async def unknown_url(request: web.Request) -> web.Response:
    raise FakeApiError(404, f"Invalid URL ({request.method} {request.path})", code="unknown_url")
