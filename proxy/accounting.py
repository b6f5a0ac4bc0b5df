"""What each understood request cost and saved: gathered by its handler, written to the
ledger by the proxy middleware once the answer is out (never on the request's own time)."""

from __future__ import annotations

from dataclasses import dataclass, field

from aiohttp import web

from proxy.ledger.pricing import PriceTable
from proxy.ledger.records import LedgerRecord, new_record_id
from proxy.ledger.writer import LedgerWriter

CACHE_STATUSES = frozenset({"HIT", "MISS", "BYPASS", "COALESCED"})


@dataclass(slots=True)
class Outcome:
    """Filled in by a handler as it learns who asked, for which model, and what it cost."""

    tenant: str
    request_type: str
    model: str
    user_id: str | None = None
    persona: dict[str, str] = field(default_factory=dict)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    cost: float = 0.0
    saved_cost: float = 0.0
    upstream_ms: float | None = None

    def paid(self, prices: PriceTable, prompt: int, completion: int, cached: int) -> float:
        """This request made the upstream call: its tokens at the model's price."""
        self._tokens(prompt, completion, cached)
        self.cost = prices.cost(self.model, prompt, cached, completion)
        return self.cost

    def saved(self, prices: PriceTable, prompt: int, completion: int, cached: int) -> None:
        """Answered without an upstream call of its own (hit, coalesced): what that call cost."""
        self._tokens(prompt, completion, cached)
        self.saved_cost += prices.cost(self.model, prompt, cached, completion)

    def _tokens(self, prompt: int, completion: int, cached: int) -> None:
        self.prompt_tokens += prompt
        self.completion_tokens += completion
        self.cached_tokens += cached


OUTCOME = web.RequestKey("sidecache_outcome", Outcome)


def record_outcome(
    ledger: LedgerWriter, request: web.Request, response: web.StreamResponse, seconds: float
) -> None:
    """One ledger record for an understood request that got as far as knowing its tenant."""
    outcome = request.get(OUTCOME)
    if outcome is None or not ledger.enabled:
        return
    status = response.headers.get("X-Cache", "MISS")
    cache_status = status if status in CACHE_STATUSES else "MISS"
    ledger.record(
        LedgerRecord(
            id=new_record_id(),
            tenant=outcome.tenant,
            request_type=outcome.request_type,
            model=outcome.model,
            user_id=outcome.user_id,
            persona=outcome.persona,
            prompt_tokens=outcome.prompt_tokens,
            completion_tokens=outcome.completion_tokens,
            cached_tokens=outcome.cached_tokens,
            cost=outcome.cost,
            saved_cost=outcome.saved_cost,
            response_time_ms=seconds * 1000,
            upstream_ms=outcome.upstream_ms,
            cache_hit=cache_status == "HIT",
            cache_status=cache_status,  # type: ignore[arg-type]
            status=response.status,
        )
    )
