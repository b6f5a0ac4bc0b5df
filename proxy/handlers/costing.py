"""The ledger's view of a request, filled in by the handlers: who asked, for which model, what
its answer cost or saved, and the budget check before a miss goes upstream (docs/design.md §5)."""

from __future__ import annotations

import asyncio
import hashlib

import msgspec
from aiohttp import web

from proxy.accounting import OUTCOME, Outcome
from proxy.budget import Reservation
from proxy.dispatch.flight import Flight
from proxy.handlers.hot import Prepared
from proxy.handlers.parse import ParsedRequest
from proxy.runtime import Runtime
from proxy.wire import Usage


def open_outcome(request: web.Request, parsed: ParsedRequest, model: str) -> Outcome:
    outcome = Outcome(
        tenant=parsed.identity.tenant,
        request_type=parsed.endpoint,
        model=model,
        user_id=parsed.user_id,
        persona=parsed.persona_fields,
    )
    request[OUTCOME] = outcome
    return outcome


def count_hit(runtime: Runtime, outcome: Outcome, found: Prepared) -> None:
    """A hit: the stored answer's tokens, every kind, avoided, and what its call cost saved
    (the row's `cost`, dollars billed, stays 0)."""
    entry = found.entry
    cost = found.cost(runtime.prices, outcome.model)
    outcome.avoided(
        cost,
        entry.prompt_tokens,
        entry.completion_tokens,
        entry.cached_tokens,
        entry.cache_write_tokens,
        entry.reasoning_tokens,
    )


async def preflight(runtime: Runtime, parsed: ParsedRequest, model: str) -> Reservation | None:
    """429 `budget_exceeded` before the upstream is asked, when the estimate would not fit;
    else the estimate is held against the budgets until the request settles (the returned
    hold, for `count_flight` or `budgets.settle`)."""
    estimate = runtime.prices.estimate(model, len(parsed.raw), max_output_tokens(parsed))
    return await runtime.budgets.preflight(parsed.identity.tenant, parsed.user_id, estimate)


def max_output_tokens(parsed: ParsedRequest) -> int | None:
    body = parsed.body  # chat's names, the Responses API's, Messages' (max_tokens)
    limit = (
        body.get("max_completion_tokens") or body.get("max_output_tokens") or body.get("max_tokens")
    )
    return limit if isinstance(limit, int) and not isinstance(limit, bool) else None


async def count_flight(
    runtime: Runtime,
    outcome: Outcome,
    parsed: ParsedRequest,
    flight: Flight,
    leader: bool,
    held: Reservation | None,
) -> None:
    """The leader paid for the call (its budgets are charged in place of its `held`
    estimate); everyone else saved it, and a failed call cost nothing (their holds are
    released)."""
    answer = await asyncio.shield(flight.result)  # the flight always ends (timeouts bound it)
    cost = 0.0
    if leader and not answer.from_peer:
        outcome.upstream, outcome.served_model = answer.upstream, answer.served_model
    if answer.ok and answer.usage is not None:
        if leader and not answer.from_peer:
            outcome.service_tier = answer.service_tier  # what prices it (flex has its own rate)
            cost = charge(runtime, outcome, answer.usage)
            outcome.upstream_ms = answer.upstream_ms
            if answer.stored:
                digest_answer(runtime, outcome, parsed, answer.body)
        else:
            outcome.saved(runtime.prices, *tokens(answer.usage), tier=answer.service_tier)
    await runtime.budgets.settle(parsed.identity.tenant, parsed.user_id, cost, held)


# The scope part of a report digest: the request as every persona, user and account asks it.
_EVERYONE = ("report",)


def digest_answer(runtime: Runtime, outcome: Outcome, parsed: ParsedRequest, body: bytes) -> None:
    """The ledger's digests for the report's persona advice (docs/design.md §14): the request
    without its persona scope, and the answer it stored. Only on a miss that stored its answer
    (a hit's path never pays for them)."""
    key = runtime.keys.request_key(
        parsed.identity.tenant, outcome.request_type, parsed.body, _EVERYONE
    )
    outcome.request_digest = key.digest[:32]
    outcome.answer_digest = hashlib.sha256(_answer_part(body)).hexdigest()[:16]


# What differs between two calls giving the same answer: ids, times, the usage and fingerprint.
_VOLATILE = frozenset(("id", "created", "created_at", "usage", "system_fingerprint"))
_canonical = msgspec.json.Encoder(order="deterministic").encode


def _answer_part(body: bytes) -> bytes:
    """The answer's body without the fields every call changes; as it is when not JSON."""
    try:
        value = msgspec.json.decode(body)
    except msgspec.DecodeError:
        return body
    if isinstance(value, dict):
        value = {k: v for k, v in value.items() if k not in _VOLATILE}
    return _canonical(value)


def charge(runtime: Runtime, outcome: Outcome, usage: Usage) -> float:
    """This request's own call: its usage at the model's price and the outcome's tier."""
    return outcome.paid(runtime.prices, *tokens(usage))


def tokens(usage: Usage) -> tuple[int, int, int, int, int]:
    """(prompt, completion, cached, cache_write, reasoning): Outcome.paid's order."""
    return (
        usage.prompt_tokens,
        usage.completion_tokens or 0,
        usage.cached_tokens,
        usage.cache_write_tokens,
        usage.reasoning_tokens,
    )
