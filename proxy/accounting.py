"""What each understood request cost and saved: gathered by its handler, written to the
ledger by the proxy middleware once the answer is out (never on the request's own time)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from aiohttp import web

from proxy.ledger.pricing import PriceTable
from proxy.ledger.records import LedgerRecord, new_record_id
from proxy.ledger.writer import LedgerWriter
from proxy.vocabulary import CacheMatch, CacheStatus, Endpoint

_now = datetime.now
# X-Cache as the ledger records it; an answer without one (an error before the lookup) is a MISS.
_CACHE_STATUS = {status.value: status for status in CacheStatus}
_HIT, _MISS = CacheStatus.HIT, CacheStatus.MISS  # an enum attribute costs a dict lookup
_AVOIDED = frozenset((CacheStatus.HIT, CacheStatus.COALESCED))  # no upstream call of their own
_EXACT = CacheMatch.EXACT


@dataclass(slots=True)
class Outcome:
    """Filled in by a handler as it learns who asked, for which model, and what it cost."""

    tenant: str
    request_type: Endpoint
    model: str
    user_id: str | None = None
    persona: dict[str, str] = field(default_factory=dict)
    # Tokens as wire.Usage counts them: prompt (every input token, cached reads and cache
    # writes included), completion (every output token, reasoning included), and the parts
    # priced at rates of their own. On a hit or a coalesced follower, the tokens avoided.
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    cost: float = 0.0
    saved_cost: float = 0.0
    upstream_ms: float | None = None
    match: CacheMatch | None = None  # set by the pipeline on a hit
    similarity: float | None = None  # a semantic hit's, set with match
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    # The service tier that served this request's own upstream call ("flex"; None: standard),
    # which prices it (set by the flex lane).
    service_tier: str | None = None
    # The report's digests (migration 005), set on a miss that stored its answer.
    request_digest: str | None = None
    answer_digest: str | None = None
    # Migration 006: the upstream that answered this request's own call, and the model it
    # was asked for there (a fallback's may differ from `model`, the requested one).
    upstream: str | None = None
    served_model: str | None = None
    # Over budget, served a cheaper model (docs/design.md §13): the one the client asked for,
    # which its answer's X-Downgraded-From names (the proxy's answer-headers signal).
    downgraded_from: str | None = None

    def paid(
        self,
        prices: PriceTable,
        prompt: int,
        completion: int,
        cached: int,
        cache_write: int = 0,
        reasoning: int = 0,
    ) -> float:
        """This request made the upstream call: its tokens at the model's price, at the tier
        that served it (`service_tier`)."""
        self._tokens(prompt, completion, cached, cache_write, reasoning)
        model = self.served_model or self.model  # what answered is what was billed
        self.cost = prices.cost(
            model, prompt, cached, completion, cache_write, reasoning, tier=self.service_tier
        )
        return self.cost

    def saved(
        self,
        prices: PriceTable,
        prompt: int,
        completion: int,
        cached: int,
        cache_write: int = 0,
        reasoning: int = 0,
        *,
        tier: str | None = None,
    ) -> None:
        """Answered without an upstream call of its own (hit, coalesced): what that call cost
        (at `tier`, the one that served it)."""
        usd = prices.cost(self.model, prompt, cached, completion, cache_write, reasoning, tier=tier)
        self.avoided(usd, prompt, completion, cached, cache_write, reasoning)

    def avoided(
        self,
        cost: float,
        prompt: int,
        completion: int,
        cached: int,
        cache_write: int = 0,
        reasoning: int = 0,
    ) -> None:
        """As `saved`, the call's cost already known (a stored answer's, priced once)."""
        self._tokens(prompt, completion, cached, cache_write, reasoning)
        self.saved_cost += cost

    def _tokens(
        self, prompt: int, completion: int, cached: int, cache_write: int, reasoning: int
    ) -> None:
        self.prompt_tokens += prompt
        self.completion_tokens += completion
        self.cached_tokens += cached
        self.cache_write_tokens += cache_write
        self.reasoning_tokens += reasoning


OUTCOME = web.RequestKey("sidecache_outcome", Outcome)
# When a live stream's first event was written to its client (time.perf_counter()): its
# time to first token, for the metrics.
FIRST_EVENT = web.RequestKey("sidecache_first_event", float)


def record_outcome(
    ledger: LedgerWriter,
    request: web.Request,
    response: web.StreamResponse,
    seconds: float,
    x_cache: str,
) -> None:
    """One ledger record for an understood request that got as far as knowing its tenant;
    `x_cache` is the response's X-Cache header, read once by the caller."""
    outcome = request.get(OUTCOME)
    if outcome is None or not ledger.enabled:
        return
    cache_status = _CACHE_STATUS.get(x_cache, _MISS)
    ledger.tokens.add(
        outcome.request_type,
        cache_status not in _AVOIDED,
        outcome.prompt_tokens,
        outcome.completion_tokens,
        outcome.cached_tokens,
        outcome.cache_write_tokens,
        outcome.reasoning_tokens,
    )
    ledger.costs.add(outcome.request_type, outcome.model, outcome.cost, outcome.saved_cost)
    ledger.record(
        LedgerRecord(  # positional, in field order: a third of the time keywords take
            new_record_id(),
            outcome.tenant,
            outcome.user_id,
            outcome.persona,
            outcome.request_type,
            outcome.model,
            outcome.prompt_tokens,
            outcome.completion_tokens,
            outcome.cached_tokens,
            outcome.cost,
            outcome.saved_cost,
            seconds * 1000,  # response_time_ms
            outcome.upstream_ms,
            cache_status is _HIT,  # cache_hit
            cache_status,
            response.status,
            _now(UTC),  # created_at
            # cache_match (a StrEnum: its value as text); a hit the pipeline did not mark
            # semantic is exact (embeddings items, moderations, exact chat)
            outcome.match or (_EXACT if cache_status is _HIT else None),
            outcome.similarity,
            outcome.cache_write_tokens,
            outcome.reasoning_tokens,
            outcome.service_tier,
            outcome.request_digest,
            outcome.answer_digest,
            outcome.upstream,
            outcome.served_model,
        )
    )
