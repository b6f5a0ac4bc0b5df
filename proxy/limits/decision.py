"""Reading a counter's answer (proxy/limits/types.py: `Counted`): the decision with the
tightest limit of each kind, and, for a refusal, which limit refused."""

from __future__ import annotations

from collections.abc import Sequence

from proxy.limits.types import Counted, Decision, Scope, ScopeUse


def decision(scopes: Sequence[Scope], counted: Counted) -> Decision:
    """The decision, with the tightest limit of each kind (least remaining) for the headers."""
    requests: ScopeUse | None = None
    tokens: ScopeUse | None = None
    for i, scope in enumerate(scopes):
        used_r, reset_r, used_t, reset_t = counted[2 + 4 * i : 6 + 4 * i]
        if scope.rpm and (requests is None or scope.rpm - used_r < requests.limit - requests.used):
            requests = ScopeUse(scope.rpm, used_r, reset_r)
        if scope.tpm and (tokens is None or scope.tpm - used_t < tokens.limit - tokens.used):
            tokens = ScopeUse(scope.tpm, used_t, reset_t)
    return Decision(bool(counted[0]), counted[1], requests, tokens)


def refused_limit(
    scopes: Sequence[Scope], counted: Decision, requests: int, tokens: int
) -> tuple[str, str, int]:
    """Which limit refused, as (scope, kind, limit): the reported use of each kind is the
    tightest one."""
    use = counted.requests
    if requests and use is not None and use.used + requests > use.limit:
        return _scope_of(scopes, use.limit, rpm=True), "requests", use.limit
    use = counted.tokens
    limit = use.limit if use is not None else 0
    return _scope_of(scopes, limit, rpm=False), "tokens", limit


def _scope_of(scopes: Sequence[Scope], limit: int, *, rpm: bool) -> str:
    for scope in scopes:
        if (scope.rpm if rpm else scope.tpm) == limit:
            return scope.name
    return "tenant"
