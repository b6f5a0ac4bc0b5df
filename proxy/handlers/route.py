"""What an endpoint with whole answers is to the pipeline (proxy/handlers/pipeline.py): its
`CachedRoute` and `WireAdapter`, what the adapter reads of a request (`Asked`), and what
parsing found (`Known`). Apart from the pipeline, so its miss steps (proxy/handlers/miss.py)
read them without importing it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import msgspec

from proxy.dispatch.batch_shapes import BatchKind, Share
from proxy.dispatch.call import Validator
from proxy.handlers.parse import ParsedRequest
from proxy.keys import CacheKey, ScopePart
from proxy.ttl import Kind
from proxy.vocabulary import Endpoint
from proxy.wire import Usage


class Asked(msgspec.Struct, frozen=True):
    """What the pipeline needs of one request's body, read by its endpoint's adapter (a Struct:
    made on every request, hits included, and a frozen dataclass costs ten times as much)."""

    model: str  # priced, recorded in the ledger and in the entry (invalidation by model)
    ttl_kind: Kind
    stream: bool = False
    include_usage: bool = False  # the client asked for the usage chunk of a stream
    batch_item: Any | None = None  # the one input a micro-batch may share a call for


@dataclass(frozen=True, slots=True)
class Batching:
    """How a micro-batched endpoint merges calls (`kind`) and makes one request's answer of its
    share of a merged one, as if it had been asked alone (`answer`)."""

    kind: BatchKind
    answer: Callable[[Share], tuple[bytes, Usage]]


class WireAdapter(Protocol):
    """How one endpoint's wire format is read, sent upstream and checked."""

    @property
    def validate(self) -> Validator:
        """An answer's usage when it is whole, None when it must not be stored."""

    @property
    def stream_kind(self) -> str:
        """How a streamed answer is assembled (proxy/cache/replay.py); "" if never streamed."""

    @property
    def batching(self) -> Batching | None:
        """For an endpoint whose single-input requests are micro-batched."""

    def read(self, parsed: ParsedRequest) -> Asked: ...

    def upstream_body(self, parsed: ParsedRequest, asked: Asked) -> bytes: ...


@dataclass(frozen=True, slots=True)
class CachedRoute:
    endpoint: Endpoint
    adapter: WireAdapter
    persona_aware: bool
    semantic: bool = False  # whether its last user message may match semantically
    # Request headers that change the answer, so their values are part of the key (Messages'
    # `anthropic-beta`); a separate part of the key, never confused with a body field.
    key_headers: tuple[str, ...] = ()


class Known(msgspec.Struct, frozen=True):
    """What parsing a request found, kept for the next request with the very same bytes
    (proxy/handlers/hot.py): shared between requests, never mutated."""

    parsed: ParsedRequest
    asked: Asked
    scope: ScopePart
    key: CacheKey
