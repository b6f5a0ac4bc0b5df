"""The ledger's view of a request, filled in by the handlers: who asked, for which model, what
its answer cost or saved, and the budget check before a miss goes upstream (docs/design.md §5)."""

from __future__ import annotations

import asyncio

from aiohttp import web

from proxy.accounting import OUTCOME, Outcome
from proxy.cache.entry import StoredResponse
from proxy.dispatch.flight import Flight
from proxy.handlers.parse import ParsedRequest
from proxy.runtime import Runtime
from proxy.wire import Usage


def open_outcome(request: web.Request, parsed: ParsedRequest, model: str) -> Outcome:
    outcome = Outcome(
        tenant=parsed.identity.tenant,
        request_type=parsed.endpoint,
        model=model,
        user_id=parsed.user_id,
        persona=parsed.persona.as_dict(),
    )
    request[OUTCOME] = outcome
    return outcome


def count_hit(runtime: Runtime, outcome: Outcome, entry: StoredResponse) -> None:
    outcome.saved(runtime.prices, entry.prompt_tokens, entry.completion_tokens, entry.cached_tokens)


async def preflight(runtime: Runtime, parsed: ParsedRequest, model: str) -> None:
    """429 `budget_exceeded` before the upstream is asked, when the estimate would not fit."""
    limit = parsed.body.get("max_completion_tokens") or parsed.body.get("max_tokens")
    max_tokens = limit if isinstance(limit, int) and not isinstance(limit, bool) else None
    estimate = runtime.prices.estimate(model, len(parsed.raw), max_tokens)
    await runtime.budgets.preflight(parsed.identity.tenant, parsed.user_id, estimate)


async def count_flight(
    runtime: Runtime, outcome: Outcome, parsed: ParsedRequest, flight: Flight, leader: bool
) -> None:
    """The leader paid for the call (and its budgets are charged); everyone else saved it."""
    answer = await asyncio.shield(flight.result)  # the flight always ends (timeouts bound it)
    if not answer.ok or answer.usage is None:
        return
    if leader and not answer.from_peer:
        cost = charge(runtime, outcome, answer.usage)
        outcome.upstream_ms = answer.upstream_ms
        await runtime.budgets.settle(parsed.identity.tenant, parsed.user_id, cost)
    else:
        prompt, completion, cached = tokens(answer.usage)
        outcome.saved(runtime.prices, prompt, completion, cached)


def charge(runtime: Runtime, outcome: Outcome, usage: Usage) -> float:
    prompt, completion, cached = tokens(usage)
    return outcome.paid(runtime.prices, prompt, completion, cached)


def tokens(usage: Usage) -> tuple[int, int, int]:
    return usage.prompt_tokens, usage.completion_tokens or 0, usage.cached_tokens
