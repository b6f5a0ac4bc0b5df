"""The input items of an `/v1/embeddings` request and their cache keys (docs/design.md §3).

Each item is keyed on its own, with the request's other keyed fields, so an item one request
stored is found by any later request that asks for it among others; the whole request has a key
too, the one `X-Cache-Key` names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from proxy.failures import InvalidRequest
from proxy.handlers.parse import ParsedRequest
from proxy.keys import NON_SEMANTIC_FIELDS, CacheKey, ScopePart
from proxy.runtime import Runtime
from proxy.vocabulary import Endpoint

MAX_INPUTS = 2048  # the upstream's limit on one call's inputs, so on one request's
_NOT_KEYED = NON_SEMANTIC_FIELDS | {"input", "encoding_format"}


def input_items(value: str | list[Any]) -> list[Any]:
    """The separate inputs of an embeddings request: strings or token arrays."""
    if isinstance(value, str):
        items: list[Any] = [value]
    elif value and all(isinstance(x, int) and not isinstance(x, bool) for x in value):
        items = [value]  # one token array
    else:
        items = value
    if not items:
        raise InvalidRequest("input must not be empty.", param="input")
    if len(items) > MAX_INPUTS:
        raise InvalidRequest(f"input takes at most {MAX_INPUTS} items.", param="input")
    for index, item in enumerate(items):
        ok = (isinstance(item, str) and item) or (
            isinstance(item, list)
            and item
            and all(isinstance(x, int) and not isinstance(x, bool) for x in item)
        )
        if not ok:
            raise InvalidRequest(
                f"input[{index}] must be a non-empty string or a non-empty array of token ids.",
                param="input",
            )
    return items


@dataclass(frozen=True, slots=True)
class ItemKeys:
    scope: ScopePart
    items: list[str]  # each input's entry key
    request: CacheKey  # the whole request's (X-Cache-Key)

    @classmethod
    def of(cls, runtime: Runtime, parsed: ParsedRequest, items: list[Any]) -> ItemKeys:
        tenant, keys, endpoint = parsed.identity.tenant, runtime.keys, Endpoint.EMBEDDINGS
        scope = keys.scope_part(parsed.directives, parsed.persona, parsed.user_id, ())
        params = {k: v for k, v in parsed.body.items() if k not in _NOT_KEYED}
        entries = [keys.item_key(tenant, endpoint, params, item, scope).entry for item in items]
        request_key = keys.request_key(tenant, endpoint, {**params, "input": items}, scope)
        return cls(scope, entries, request_key)
