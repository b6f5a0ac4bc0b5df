"""The attributes of a request's server span, read once its answer is out: from the request's
`Outcome` (proxy/accounting.py) and the answer's cache headers, so no handler threads tracing
arguments through. GenAI semantic conventions where they apply, `sidecache.*` otherwise.

`gen_ai.operation.name` per endpoint: chat completions and Anthropic messages are `chat`, legacy
completions `text_completion`, embeddings `embeddings`, the Responses API `generate_content`;
moderations, which the conventions do not name, `moderations`."""

from __future__ import annotations

from typing import Any

import msgspec
from aiohttp import web

from proxy.accounting import OUTCOME
from proxy.vocabulary import Endpoint

OPERATIONS = {
    Endpoint.CHAT.value: "chat",
    Endpoint.COMPLETIONS.value: "text_completion",
    Endpoint.EMBEDDINGS.value: "embeddings",
    Endpoint.MODERATIONS.value: "moderations",
    Endpoint.RESPONSES.value: "generate_content",
    Endpoint.MESSAGES.value: "chat",
}
SCOPE_HEADER = "X-Cache-Scope"
# The whole answer's JSON where the response does not hold it (a stream, assembled as it is for
# storing; a streamed hit's stored body). Set by the pipeline only when tracing is on.
ANSWER_BODY = web.RequestKey("sidecache_answer_body", bytes)


class _Answered(msgspec.Struct):
    model: str | None = None


_answered = msgspec.json.Decoder(_Answered)


def operation(endpoint: str) -> str:
    return OPERATIONS.get(endpoint, endpoint)


def answer_body(request: web.Request, response: web.StreamResponse) -> bytes | None:
    """The successful answer's whole JSON: kept by the pipeline (ANSWER_BODY), else the
    response's own body when it is plain JSON; None for errors and compressed bodies."""
    kept: bytes | None = request.get(ANSWER_BODY)
    if kept is not None:
        return kept
    if not isinstance(response, web.Response) or response.status != 200:
        return None
    body = response.body
    if isinstance(body, bytes) and "Content-Encoding" not in response.headers:
        return body
    return None


def response_model(body: bytes | None) -> str | None:
    """The model the answer names (the upstream's, or the stored answer's on a hit)."""
    if body is None:
        return None
    try:
        return _answered.decode(body).model
    except msgspec.DecodeError:  # not JSON, or a `model` that is not a string
        return None


def finish_server_span(
    span: Any,
    request: web.Request,
    response: web.StreamResponse,
    endpoint: str,
    body: bytes | None,
) -> None:
    """Name and attributes of the server span of an understood request that was answered;
    `body` is its answer_body."""
    name = operation(endpoint)
    span.set_attribute("gen_ai.operation.name", name)
    provider = "anthropic" if endpoint == Endpoint.MESSAGES.value else "openai"
    span.set_attribute("gen_ai.provider.name", provider)
    span.set_attribute("http.request.method", request.method)
    span.set_attribute("url.path", request.path)
    span.set_attribute("http.response.status_code", response.status)
    headers = response.headers
    span.set_attribute("sidecache.cache", headers.get("X-Cache", "NONE"))
    match = headers.get("X-Cache-Match")
    if match is not None:
        span.set_attribute("sidecache.cache.match", match)
    similarity = headers.get("X-Cache-Similarity")
    if similarity is not None:
        span.set_attribute("sidecache.cache.similarity", float(similarity))
    scope = request.headers.get(SCOPE_HEADER)
    if scope:
        span.set_attribute("sidecache.persona_scope", scope.strip().lower())
    if response.status >= 500:
        span.set_attribute("error.type", str(response.status))
    answered = response_model(body)
    if answered:
        span.set_attribute("gen_ai.response.model", answered)
    outcome = request.get(OUTCOME)
    if outcome is None:
        return
    if outcome.model:
        span.update_name(f"{name} {outcome.model}")
        span.set_attribute("gen_ai.request.model", outcome.model)
    span.set_attribute("gen_ai.usage.input_tokens", outcome.prompt_tokens)
    span.set_attribute("gen_ai.usage.output_tokens", outcome.completion_tokens)
    span.set_attribute("sidecache.tenant", outcome.tenant)
    span.set_attribute("sidecache.cost_usd", outcome.cost)
    span.set_attribute("sidecache.saved_cost_usd", outcome.saved_cost)
    if outcome.match is not None:
        span.set_attribute("sidecache.cache.match", outcome.match.value)
    if outcome.similarity is not None:
        span.set_attribute("sidecache.cache.similarity", outcome.similarity)
