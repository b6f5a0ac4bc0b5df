"""Single-flight: identical concurrent misses share one upstream call (docs/design.md §4).

A `Flight` is the upstream call for one cache key. It runs in its own task, so no client's
disconnect cancels what other waiters share. Every client — the one that started it and the
ones that joined — reads the same flight: a whole answer (`result`) or, for a streamed call,
the SSE events in order as they arrive, from the first one (late joiners catch up, then
follow live).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from multidict import CIMultiDict

from proxy.failures import Failure
from proxy.wire import Usage


@dataclass(slots=True)
class Answer:
    """What every waiter of a flight is answered with (when not following a live stream): the
    upstream's answer, whatever its status, or the sidecar's own `failure`, which each waiter
    raises (then status, headers and body are empty)."""

    status: int
    headers: CIMultiDict[str]
    body: bytes
    streamed: bool = False  # the body is the assembled form of an SSE stream
    stored: bool = False
    from_peer: bool = False  # another replica made the call; this one read its entry
    usage: Usage | None = None  # what the call cost in tokens (the stored entry's, from a peer)
    upstream_ms: float | None = None
    # The tier that served the call: the answer's own `service_tier`, "flex" when sent at flex
    # and the answer says none (proxy/upstream/flex.py), None when unknown (a peer's, a batch's).
    service_tier: str | None = None
    failure: Failure | None = None
    # Who answered (proxy/upstream/guarded.py): the upstream, the model it was asked for, and
    # the model's own upstream when a fallback answered instead.
    upstream: str | None = None
    served_model: str | None = None
    fallback_from: str | None = None

    @classmethod
    def of_failure(cls, failure: Failure) -> Answer:
        return cls(0, CIMultiDict(), b"", failure=failure)

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.failure is None


@dataclass(slots=True)
class Event:
    raw: bytes
    usage_only: bool = False  # the usage chunk the sidecar asked for on every client's behalf


@dataclass(slots=True)
class StreamHead:
    """The upstream answered a streamed call with 200 and these relayable headers."""

    headers: CIMultiDict[str]


class Flight:
    def __init__(self, key: str) -> None:
        loop = asyncio.get_running_loop()
        self.key = key
        self.events: list[Event] = []
        # One "is this client still connected?" check per waiting client.
        self.watchers: list[Callable[[], bool]] = []
        # Resolves once: a StreamHead when a live stream starts, else the final Answer.
        self.head: asyncio.Future[StreamHead | Answer] = loop.create_future()
        self.result: asyncio.Future[Answer] = loop.create_future()
        self._next: asyncio.Future[None] = loop.create_future()
        self.task: asyncio.Task[None] | None = None

    # -- the flight's own task fills it --------------------------------------------------

    def start_stream(self, headers: CIMultiDict[str]) -> None:
        if not self.head.done():
            self.head.set_result(StreamHead(headers))

    def push(self, event: Event) -> None:
        self.events.append(event)
        self._wake()

    def finish(self, answer: Answer) -> None:
        if not self.head.done():
            self.head.set_result(answer)
        if not self.result.done():
            self.result.set_result(answer)
        self._wake()

    def _wake(self) -> None:
        woken, self._next = self._next, asyncio.get_running_loop().create_future()
        woken.set_result(None)

    # -- waiters read it ------------------------------------------------------------------

    def wanted(self) -> bool:
        """Whether any client still waits for this flight (aiohttp does not cancel handlers
        whose client left, so each waiter's connection is asked)."""
        return any(connected() for connected in self.watchers)

    async def follow(self) -> AsyncIterator[Event]:
        """Every event of a live stream from the first, then each as it comes, until the end."""
        index = 0
        while True:
            while index < len(self.events):
                yield self.events[index]
                index += 1
            if self.result.done():
                return
            await asyncio.shield(self._next)


@dataclass(slots=True)
class FlightTable:
    """The flights in progress in this process, by cache key."""

    flights: dict[str, Flight] = field(default_factory=dict)

    def join(self, key: str) -> tuple[Flight, bool]:
        """The flight for `key` and whether the caller leads it (must start its task)."""
        flight = self.flights.get(key)
        if flight is not None and not flight.result.done():
            return flight, False
        flight = Flight(key)
        self.flights[key] = flight
        return flight, True

    def land(self, flight: Flight) -> None:
        if self.flights.get(flight.key) is flight:
            del self.flights[flight.key]
