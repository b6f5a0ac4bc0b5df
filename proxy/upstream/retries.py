"""When an upstream call is tried again, and after how long (docs/design.md §13).

Connection errors and 502/503/504 are retried on the same upstream (at most UPSTREAM_RETRIES
times) after an exponential back-off with full jitter, or after the answer's `Retry-After`
when that is longer, and only while the wait ends within the call's deadline. A 429 is never
retried on the upstream that sent it: it only moves the call to a fallback. What was tried is
counted here per process for the admin API, and in the metrics.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

RETRY_STATUSES = frozenset({502, 503, 504})
# Answers that move a call to the next upstream of its chain (with one left): 5xx and 429.
MOVE_STATUSES = frozenset({429, *range(500, 600)})
BACKOFF_BASE_S = 0.1
BACKOFF_CAP_S = 5.0


def backoff_s(attempt: int, retry_after: float | None, rng: random.Random) -> float:
    """The wait before retry number `attempt + 1`: full jitter over an exponential ceiling
    (AWS's "full jitter": no two clients retry in step), never shorter than Retry-After."""
    jittered = rng.uniform(0, min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2**attempt))
    return max(jittered, retry_after or 0.0)


def retry_after_s(headers: Mapping[str, str]) -> float | None:
    """`Retry-After` in seconds (a number or an HTTP date), None when absent or unreadable."""
    value = headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


@dataclass(slots=True)
class RouteStats:
    """This process's counts since start-up: answers served per upstream, retries per
    upstream, fallbacks per (from, to). Upstream names are configured: bounded."""

    served: Counter[str] = field(default_factory=Counter)
    retries: Counter[str] = field(default_factory=Counter)
    fallbacks: Counter[tuple[str, str]] = field(default_factory=Counter)
