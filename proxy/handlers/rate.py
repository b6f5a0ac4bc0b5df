"""A request against its rate limits (docs/design.md §13): one request counted before the
cache is read (a hit counts as a request, never as tokens), the pre-flight token estimate
charged before a miss goes upstream, and the charge corrected with the real usage after."""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any, TypeAlias

from aiohttp import web

from proxy.dispatch.flight import Flight
from proxy.handlers.costing import max_output_tokens
from proxy.handlers.parse import ParsedRequest
from proxy.limits import RATE_DECISION, Decision, Scope
from proxy.runtime import Runtime
from proxy.vocabulary import Endpoint

# A request's requests check: decided (from a lease), or sent and to be awaited.
Counting: TypeAlias = Decision | Coroutine[Any, Any, Decision | None]


class RateCheck:
    """A miss's place in its limits: its scopes, and its token charge's member in the logs,
    once it has one (a hit needs none of this: its one request is decided before it)."""

    __slots__ = ("member", "scopes", "tokens")

    def __init__(self, scopes: tuple[Scope, ...]) -> None:
        self.scopes = scopes
        self.member = ""  # the token charge's, made when it is charged
        self.tokens = 0  # charged for it: the estimate, until corrected


async def admit_request(
    request: web.Request, runtime: Runtime, parsed: ParsedRequest, counting: Counting
) -> None:
    """429 `rate_limit_exceeded` when a requests limit is reached; the headers either way (a
    leased hit's check is decided already, and allowed: the hit path keeps its decision itself,
    sparing a coroutine per hit)."""
    decision = counting if isinstance(counting, Decision) else await counting
    if decision is None:
        return  # the counter is down: not enforced (counted in a metric)
    request[RATE_DECISION] = decision
    if not decision.allowed:
        limiter = runtime.limiter
        scopes = limiter.scopes(parsed.identity.tenant, parsed.user_id)
        raise limiter.refusal(scopes, decision, 1, 0)


def charged(runtime: Runtime, parsed: ParsedRequest) -> RateCheck | None:
    """A miss's token charge, when any limit applies to it."""
    scopes = runtime.limiter.scopes(parsed.identity.tenant, parsed.user_id)
    return RateCheck(scopes) if scopes else None


async def admit_tokens(
    request: web.Request, runtime: Runtime, parsed: ParsedRequest, check: RateCheck
) -> None:
    """Before a miss goes upstream: its estimate charged against the tokens limits."""
    if not any(scope.tpm for scope in check.scopes):
        return
    limiter = runtime.limiter
    # Embeddings answer no tokens: their estimate is their input's alone.
    output = 0 if parsed.endpoint is Endpoint.EMBEDDINGS else max_output_tokens(parsed)
    estimate = runtime.prices.token_estimate(len(parsed.raw), output)
    check.member = limiter.member()
    decision = await limiter.check(check.scopes, check.member, requests=0, tokens=estimate)
    if decision is None:
        return
    before = request.get(RATE_DECISION)
    if before is not None:  # the requests trio is the one the request was counted by
        decision.requests = before.requests
    request[RATE_DECISION] = decision
    if not decision.allowed:
        raise limiter.refusal(check.scopes, decision, 0, estimate)
    check.tokens = estimate


async def settle_tokens(runtime: Runtime, check: RateCheck, used: int) -> None:
    """The estimate replaced by what the call used (nothing, when this request made no call:
    it failed, or it shared another request's)."""
    if check.tokens and used != check.tokens:
        await runtime.limiter.correct(check.scopes, check.member, used)


def own_usage(flight: Flight, leader: bool) -> int:
    """The tokens of the call this request made itself (0: it made none, or it failed)."""
    if not leader or not flight.result.done() or flight.result.cancelled():
        return 0
    answer = flight.result.result()
    usage = answer.usage
    if usage is None or not answer.ok or answer.from_peer:
        return 0
    return usage.prompt_tokens + (usage.completion_tokens or 0)
