"""Requests and tokens per minute per tenant and per user (docs/design.md §13)."""

from proxy.limits.headers import RATE_DECISION, RatedResponse, add_rate_headers, rated_response
from proxy.limits.lease import Limits
from proxy.limits.limiter import Limiter
from proxy.limits.types import Decision, Scope, ScopeUse

__all__ = [
    "RATE_DECISION",
    "Decision",
    "Limiter",
    "Limits",
    "RatedResponse",
    "Scope",
    "ScopeUse",
    "add_rate_headers",
    "rated_response",
]
