"""What the ledger writer reports of itself: its counters, as metrics and the admin overview
read them."""

from __future__ import annotations

import msgspec


class WriterStats(msgspec.Struct, frozen=True):
    sink: str
    sink_up: bool
    queued: int  # in memory, waiting for a flush
    written: int  # rows the database took as new
    duplicates: int  # records it already had (a replay of something it had taken)
    journaled: int  # records appended to the journal
    replayed: int  # journaled records since handed to the database
    journal_pending: int  # records in the journal now
    dropped: int  # refused because the queue was full
    rejected: int  # refused by the database as bad data; kept in the rejects file
    failures: int  # failed attempts to reach the database


# The token kinds a ledger row counts (its columns, in this order), as the metric names them.
TOKEN_KINDS = ("input", "output", "cached_input", "cache_write", "reasoning")


class TokenTally:
    """Tokens of the recorded requests by endpoint, kind and whether they were paid for (the
    request made the upstream call) or avoided (a hit or a coalesced follower): what
    `sidecache_tokens_total` exposes. A handful of fixed keys; counted as each record is made.
    `input` and `output` count every prompt and completion token; the other kinds are parts
    of them (cached_input and cache_write of input, reasoning of output). Avoided: the tokens
    of requests answered HIT or COALESCED; a partial embeddings hit counts as paid."""

    def __init__(self) -> None:
        self._counts: dict[tuple[str, bool], list[int]] = {}

    def add(
        self,
        endpoint: str,
        paid: bool,
        prompt: int,
        completion: int,
        cached: int,
        cache_write: int,
        reasoning: int,
    ) -> None:
        counts = self._counts.get((endpoint, paid))
        if counts is None:
            counts = self._counts[(endpoint, paid)] = [0, 0, 0, 0, 0]
        counts[0] += prompt
        counts[1] += completion
        counts[2] += cached
        counts[3] += cache_write
        counts[4] += reasoning

    def samples(self) -> list[tuple[str, str, str, int]]:
        """(endpoint, kind, "paid" or "avoided", tokens) for every count kept."""
        return [
            (endpoint, kind, "paid" if paid else "avoided", count)
            for (endpoint, paid), counts in sorted(self._counts.items())
            for kind, count in zip(TOKEN_KINDS, counts, strict=True)
        ]


# Distinct (endpoint, model) keys a CostTally keeps before folding new models into "other":
# model names are client-chosen, so memory stays bounded whatever clients send.
_COST_KEYS_MAX = 256
OTHER_MODEL = "other"


class CostTally:
    """USD of the recorded requests by endpoint and model: spent on their own upstream calls
    and saved (a hit's or a coalesced follower's avoided call). What `sidecache_cost_usd_total`
    and `sidecache_saved_usd_total` expose; the collector bounds the model label to the price
    table's names at scrape time, so the hit path only adds two floats."""

    def __init__(self) -> None:
        self._usd: dict[tuple[str, str], list[float]] = {}

    def add(self, endpoint: str, model: str, cost: float, saved: float) -> None:
        usd = self._usd.get((endpoint, model))
        if usd is None:
            if len(self._usd) >= _COST_KEYS_MAX:
                model = OTHER_MODEL
            usd = self._usd.setdefault((endpoint, model), [0.0, 0.0])
        usd[0] += cost
        usd[1] += saved

    def samples(self) -> list[tuple[str, str, float, float]]:
        """(endpoint, model, cost, saved) for every count kept."""
        return [(endpoint, model, usd[0], usd[1]) for (endpoint, model), usd in self._usd.items()]
