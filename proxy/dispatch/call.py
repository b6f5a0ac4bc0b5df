"""What a flight needs to know about the upstream call it makes and the answer it stores."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import msgspec

from proxy.cache.entry import EntryMeta, StoredResponse, encode_entry
from proxy.cache.store import CacheStore
from proxy.keys import CacheKey
from proxy.upstream.exchange import UpstreamRequest
from proxy.wire import CompletionTokensDetails, PromptTokensDetails, Usage

# Checks an upstream answer body before it is stored: its usage when whole, None when not.
Validator = Callable[[bytes], Usage | None]


@dataclass(frozen=True, slots=True)
class StorePlan:
    """Where and for how long a successful answer is stored (absent when the request must not
    write, e.g. `Cache-Control: no-store`)."""

    key: CacheKey
    ttl_s: int
    meta: EntryMeta


@dataclass(slots=True)
class UpstreamCall:
    """A flight's upstream call: the request, and what to do with a successful answer."""

    request: UpstreamRequest
    validate: Validator
    plan: StorePlan | None
    stream: bool = False  # asks the upstream for SSE
    kind: str = ""  # the stream format's kind (proxy/cache/formats.py): how to read a stream
    coalesce: bool = True  # may share with peers on other replicas


def validator(kind: type[msgspec.Struct]) -> Validator:
    """A Validator for answers of `kind`, a Struct with an optional `usage` field."""
    decoder = msgspec.json.Decoder(kind)

    def validate(body: bytes) -> Usage | None:
        try:
            answer = decoder.decode(body)
        except msgspec.DecodeError:
            return None
        usage: Usage | None = getattr(answer, "usage", None)
        return usage or Usage()

    return validate


def stored_response(
    body: bytes, meta: EntryMeta, usage: Usage, tier: str | None = None
) -> StoredResponse:
    """The entry of a whole answer: its body and every kind of token its call billed, with
    the service tier that served it (None: standard)."""
    return StoredResponse(
        body=body,
        stored_at=time.time(),
        meta=meta,
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens or 0,
        cached_tokens=usage.cached_tokens,
        cache_write_tokens=usage.cache_write_tokens,
        reasoning_tokens=usage.reasoning_tokens,
        service_tier=tier,
    )


def entry_usage(entry: StoredResponse) -> Usage:
    """A stored answer's tokens back as the Usage its call reported (a peer's answer)."""
    return Usage(
        prompt_tokens=entry.prompt_tokens,
        completion_tokens=entry.completion_tokens,
        prompt_tokens_details=PromptTokensDetails(entry.cached_tokens),
        completion_tokens_details=CompletionTokensDetails(entry.reasoning_tokens),
        cache_write_tokens=entry.cache_write_tokens,
    )


async def store_answer(
    store: CacheStore,
    call: UpstreamCall,
    body: bytes,
    usage: Usage | None,
    tier: str | None = None,
) -> bool:
    """Stores a successful answer per the call's plan if it is whole (`usage` is what
    `call.validate` made of it: None when it is not), with the service tier that served it
    (None: standard), so its hits save what it cost; whether it was stored."""
    if call.plan is None or usage is None:
        return False
    entry = stored_response(body, call.plan.meta, usage, tier)
    await store.put(call.plan.key.entry, encode_entry(entry), call.plan.ttl_s)
    return True
