"""What the rate limiter decides, shared by the limiter, its counters and its leases."""

from __future__ import annotations

from typing import NamedTuple

import msgspec
from multidict import istr


class Scope(NamedTuple):
    """One counted scope of a request (its tenant, or its user within the tenant)."""

    name: str  # "tenant" | "user"
    key: str  # where it is counted: its Redis key prefix (all share the tenant's hash tag)
    rpm: int
    tpm: int


class ScopeUse(msgspec.Struct, frozen=True):
    """One limit as the headers report it: `used` after this request, `reset_ms` until all
    that is counted has left the window (OpenAI's "resets to its initial state")."""

    limit: int
    used: int
    reset_ms: int


class Decision(msgspec.Struct, gc=False):
    """`gc=False`: none can be part of a cycle (its `headers` hold strings), so the collector
    need not scan them. Every request served from one lease (proxy/limits/lease.py) shares the
    lease's decision, whose `used` counts every leased request."""

    allowed: bool
    retry_ms: int = 0
    requests: ScopeUse | None = None  # the tightest requests limit, None when none applies
    tokens: ScopeUse | None = None
    # Its x-ratelimit-* headers (proxy/limits/headers.py), once made.
    headers: dict[istr, str] | None = None
    lines: bytes | None = None  # the same as header lines ending a header block


# What a counter answers: [allowed 1|0, retry ms] + per scope [requests used, their reset ms,
# tokens used, their reset ms] (used: after the request when allowed, before it when not).
Counted = list[int]
