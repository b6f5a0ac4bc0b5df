"""What a cache hit would otherwise recompute on every request, kept from the last time
(issue #22): what parsing a request found, by the request's exact bytes, and each stored entry
decoded with its answer headers and SSE replay, by the entry's bytes.

Both are pure functions of what they are keyed by, so a table hit is the same answer as the
work it skips: a request is known by its endpoint, its body exactly as sent and every header
exactly as sent (so any header that could change its tenant, directives, persona or user —
today's or a future one — makes it another request); an entry by its key and its stored bytes
compared in full (so an overwritten or re-read entry is decoded again). Neither table decides
whether an entry may be served: freshness, invalidation and the persona rule run on every hit.
Objects they hand out are shared between requests and never mutated.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Generic, TypeVar

from aiohttp import web

from proxy.cache.entry import StoredResponse, decode_response
from proxy.cache.formats import replay_stream
from proxy.cache.lru import ByteLru
from proxy.keys import CacheKey
from proxy.ledger.pricing import PriceTable
from proxy.vocabulary import CacheMatch, CacheStatus

T = TypeVar("T")
RawHeaders = Sequence[tuple[bytes, bytes]]
# Bytes charged per table entry on top of what it holds (dict slot, tuple, objects).
_OVERHEAD = 400
# An entry holds its stored bytes, its decoded body and up to two SSE replays of it (each
# about twice the body): charged up front so a replay made later never overruns the bound.
_ENTRY_CHARGE = 6
# A known request holds its body as sent, as read (inflated) and decoded: charged alike.
_REQUEST_CHARGE = 6
_EXACT_HIT = {
    "Content-Type": "application/json",
    "X-Cache": CacheStatus.HIT.value,
    "X-Cache-Match": CacheMatch.EXACT.value,  # a semantic hit's headers replace it
}


class KnownRequests(Generic[T]):
    """What parsing a request found (`T`), for the next request with the very same bytes."""

    def __init__(self, max_bytes: int) -> None:
        self._table: ByteLru[tuple[str, bytes, RawHeaders], T] = ByteLru(max_bytes)

    def get(self, endpoint: str, body: bytes, headers: RawHeaders) -> T | None:
        return self._table.get((endpoint, body, headers))

    def put(self, endpoint: str, body: bytes, headers: RawHeaders, found: T, read: int) -> None:
        """`read`: the size of the body once read (inflated), which `found` holds."""
        size = len(body) + _REQUEST_CHARGE * read + sum(len(n) + len(v) for n, v in headers)
        self._table.put((endpoint, body, headers), found, size + _OVERHEAD)


class Prepared:
    """A stored answer decoded once: its entry, its hit headers, and its SSE replays."""

    __slots__ = ("_priced", "_replays", "entry", "headers", "raw")

    def __init__(self, raw: bytes, entry: StoredResponse, key: CacheKey) -> None:
        self.raw = raw
        self.entry = entry
        self.headers = {**_EXACT_HIT, "X-Cache-Key": key.short_id}
        self._replays: list[bytes | None] = [None, None]
        self._priced: tuple[str, float] | None = None  # (model, what the answer cost at it)

    def cost(self, prices: PriceTable, model: str) -> float:
        """What the call that made this answer cost at `model`'s prices (what a hit saves)."""
        priced = self._priced
        if priced is None or priced[0] != model:
            entry = self.entry
            usd = prices.cost(
                model,
                entry.prompt_tokens,
                entry.cached_tokens,
                entry.completion_tokens,
                entry.cache_write_tokens,
                entry.reasoning_tokens,
                tier=entry.service_tier,
            )
            if prices.price_for(model) is None:
                return usd  # unpriced: counted by the table on every request, so never kept
            priced = self._priced = (model, usd)
        return priced[1]

    def replay(self, include_usage: bool) -> bytes:
        """The answer as the SSE stream it would have been, `data: [DONE]` included."""
        payload = self._replays[include_usage]
        if payload is None:
            payload = self._replays[include_usage] = replay_stream(self.entry.body, include_usage)
        return payload


class PreparedEntries:
    def __init__(self, max_bytes: int) -> None:
        self._table: ByteLru[str, Prepared] = ByteLru(max_bytes)

    def get(self, key: CacheKey, raw: bytes) -> Prepared | None:
        """The entry `raw` read under `key`, decoded; None when it is not a stored answer."""
        entry_key = key.entry
        found = self._table.get(entry_key)
        if found is not None and (found.raw is raw or found.raw == raw):
            return found
        entry = decode_response(raw)
        if entry is None:  # a broken entry is a miss, never a 500
            self._table.pop(entry_key)
            return None
        prepared = Prepared(raw, entry, key)
        self._table.put(entry_key, prepared, _ENTRY_CHARGE * len(raw) + _OVERHEAD)
        return prepared


# Each table's bound: enough for the hot set of a busy process (a few thousand requests and
# answers of a few KB), small beside the caches themselves.
TABLE_BYTES = 16 << 20
PREPARED = web.AppKey("sidecache_prepared_entries", PreparedEntries)
