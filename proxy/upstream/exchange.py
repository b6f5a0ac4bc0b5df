"""What a guarded upstream call is made of (proxy/upstream/guarded.py): the request, what a
reader knows of the exchange besides the response, a whole answer, and the failure a reader
raises to count a call against the breaker while still giving its result."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

import aiohttp
from multidict import CIMultiDict

from proxy.upstream.client import read_body
from proxy.upstream.gate import Priority
from proxy.upstream.routes import DEFAULT

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class UpstreamRequest:
    """A POST to the upstream. `body` may be a function that makes it when the call's turn
    comes (a micro-batch leaves out the clients that left while it waited); it raises
    ClientGone when nobody is left to send it for."""

    endpoint: str
    path: str
    headers: Mapping[str, str]
    body: bytes | Callable[[], bytes]
    priority: Priority
    # Whose call it is, for the breaker's 5xx accounting; None: counted as shared (a batch).
    tenant: str | None = None
    model: str | None = None  # routes the call (None: the first upstream)


@dataclass(frozen=True, slots=True)
class Exchange:
    """What a reader knows of the call besides the response."""

    relayed: CIMultiDict[str]  # the response's headers fit for the client
    started: float  # perf_counter when the request was sent
    upstream: str = DEFAULT  # the upstream that answered
    served_model: str | None = None  # the model it was asked for
    fallback_from: str | None = None  # the model's own upstream, when another answered

    def elapsed_ms(self) -> float:
        return (time.perf_counter() - self.started) * 1000


@dataclass(frozen=True, slots=True)
class Reply:
    """The upstream's whole answer, whatever its status."""

    status: int
    headers: CIMultiDict[str]
    body: bytes
    upstream_ms: float


Reader = Callable[[aiohttp.ClientResponse, Exchange], Awaitable[T]]


class UpstreamFailure(Exception, Generic[T]):
    """Raised by a reader (and for every 5xx) to count the call against the breaker while still
    giving `result` to the caller: an upstream's error answer is relayed, not raised."""

    def __init__(self, result: T) -> None:
        super().__init__("the upstream call failed")
        self.result = result


async def read_reply(response: aiohttp.ClientResponse, exchange: Exchange) -> Reply:
    body = await read_body(response)
    return Reply(response.status, exchange.relayed, body, exchange.elapsed_ms())
