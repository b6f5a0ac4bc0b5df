"""Requests and tokens per minute per tenant and per user (docs/design.md §13)."""

from proxy.limits.headers import RATE_DECISION, RateHeaders
from proxy.limits.limiter import Limiter
from proxy.limits.types import Decision, Scope, ScopeUse

__all__ = ["RATE_DECISION", "Decision", "Limiter", "RateHeaders", "Scope", "ScopeUse"]
