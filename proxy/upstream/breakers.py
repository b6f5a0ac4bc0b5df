"""Circuit breakers (pybreaker), one per upstream endpoint family (docs/design.md §4, §9).

pybreaker has no asyncio support, so a call is guarded with `with breaker.guard():` (pybreaker's
`calling()` plus the probe gate below) around the awaited upstream call only, never around
writes to a client; proxy/upstream/attempt.py is the one caller. Timeouts and connection errors
count as failures; 5xx answers count only when they are not one tenant's alone (`counts_5xx`,
docs/design.md §4); 4xx answers return normally and do not. A call cancelled because its
clients left is no failure (pybreaker then counts it as a success). While a breaker is open,
misses fail fast with BreakerOpen (503 + Retry-After). Half-open lets exactly one probe
through: pybreaker alone would let every concurrent call through.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import pybreaker

from proxy.failures import BreakerOpen
from proxy.upstream.routes import DEFAULT
from proxy.vocabulary import Endpoint

FAMILIES = ("chat", "embeddings", "moderation", "other")
ANTHROPIC = "anthropic"  # /v1/messages' breaker when ANTHROPIC_BASE_URL is set apart
# How long a tenant counts as calling, or as having seen a 5xx, for `counts_5xx`.
TENANT_WINDOW_S = 300.0
_PRUNE_ABOVE = 1024  # callers remembered before old ones are dropped on a call
_FAMILY_BY_ENDPOINT: dict[str, str] = {
    Endpoint.CHAT: "chat",
    Endpoint.COMPLETIONS: "chat",
    Endpoint.EMBEDDINGS: "embeddings",
    Endpoint.MODERATIONS: "moderation",
}


class _Transitions(pybreaker.CircuitBreakerListener):
    def __init__(self, board: BreakerBoard) -> None:
        self._board = board

    def state_change(self, cb: pybreaker.CircuitBreaker, old: object, new: object) -> None:
        if getattr(old, "name", None) == getattr(new, "name", None):
            return  # pybreaker also notifies a reset of a closed breaker: no transition
        name = str(cb.name)
        self._board.transitions += 1
        self._board.last_change[name] = time.time()
        if getattr(new, "name", None) == pybreaker.STATE_OPEN:
            self._board.opened_count[name] = self._board.opened_count.get(name, 0) + 1

    def failure(self, cb: pybreaker.CircuitBreaker, exc: BaseException) -> None:
        self._board.last_failure[str(cb.name)] = (time.time(), type(exc).__name__)


class Breaker:
    def __init__(
        self, name: str, fail_max: int, reset_timeout_s: float, listener: _Transitions
    ) -> None:
        self.name = name
        self.reset_timeout_s = reset_timeout_s
        self.cb = pybreaker.CircuitBreaker(
            fail_max=fail_max,
            reset_timeout=reset_timeout_s,
            name=name,
            listeners=[listener],
            throw_new_error_on_trip=False,
            exclude=[asyncio.CancelledError],
        )
        self._probing = False
        # tenant -> when it last called / last got a 5xx (time.monotonic), within the window.
        self._callers: dict[str, float] = {}
        self._failing: dict[str, float] = {}

    def saw_call(self, tenant: str | None) -> None:
        if tenant is None:
            return
        now = time.monotonic()
        self._callers[tenant] = now
        if len(self._callers) > _PRUNE_ABOVE:
            _prune(self._callers, now)

    def counts_5xx(self, tenant: str | None) -> bool:
        """Whether this 5xx counts against the breaker: when tenants other than this one saw
        5xx too within the window, or nobody else called at all (a single-tenant deployment
        has no one else to protect). One tenant's malformed or hostile requests that make the
        upstream fail therefore never refuse every other tenant's calls. A call without a
        tenant (a micro-batch) always counts, as before."""
        if tenant is None:
            return True
        now = time.monotonic()
        self._failing[tenant] = now
        _prune(self._failing, now)
        _prune(self._callers, now)
        return len(self._failing) >= min(2, len(self._callers))

    @property
    def state(self) -> str:
        return str(self.cb.current_state)

    @property
    def failures(self) -> int:
        return int(self.cb.fail_counter)

    def near_open(self) -> bool:
        """Whether one more failure opens it (or it is not closed): a retry then would only be
        refused by the breaker its own tries opened, so the caller answers the failure."""
        closed = self.state == pybreaker.STATE_CLOSED
        return not closed or self.failures + 1 >= int(self.cb.fail_max)

    def opened_at(self) -> datetime | None:
        opened: datetime | None = self.cb._state_storage.opened_at
        return opened if self.state != pybreaker.STATE_CLOSED else None

    def retry_after_s(self) -> int:
        opened = self.opened_at()
        if opened is None:
            return 1
        left = self.reset_timeout_s - (datetime.now(UTC) - opened).total_seconds()
        return max(1, math.ceil(left))

    def admit(self) -> None:
        """Raises BreakerOpen at once when a call now would be refused, so that a miss never
        waits for an upstream slot (behind the probe, say) only to be refused then."""
        if self.state == pybreaker.STATE_CLOSED:
            return
        opened = self.opened_at()
        due = opened is None or datetime.now(UTC) >= opened + timedelta(
            seconds=self.reset_timeout_s
        )
        if self._probing or not due:
            raise self._open_error()

    @contextmanager
    def guard(self) -> Iterator[None]:
        """The block is one upstream call; raises BreakerOpen at once while it is open."""
        probing = False
        if self.state != pybreaker.STATE_CLOSED:
            if self._probing:
                raise self._open_error()
            probing = self._probing = True
        try:
            with self.cb.calling():
                yield
        except pybreaker.CircuitBreakerError:
            raise self._open_error() from None
        finally:
            if probing:
                self._probing = False

    def reset(self) -> None:
        self.cb.close()
        self._probing = False
        self._failing.clear()

    def _open_error(self) -> BreakerOpen:
        wait = self.retry_after_s()
        return BreakerOpen(
            f"The upstream is failing; Sidecache stopped sending {self.name} calls for a "
            f"while. Cached answers are still served. Retry in {wait} s.",
            retry_after_s=wait,
        )


def _prune(seen: dict[str, float], now: float) -> None:
    for tenant in [t for t, at in seen.items() if now - at > TENANT_WINDOW_S]:
        del seen[tenant]


class BreakerBoard:
    """Every breaker of this process (state is per process, docs/design.md §9): one per
    upstream and endpoint family. Upstream `default`'s are named by family alone ("chat"),
    another upstream's "<upstream>/<family>"."""

    def __init__(
        self,
        upstream: str,
        fail_max: int,
        reset_timeout_s: float,
        anthropic: str | None = None,
        *,
        upstreams: Sequence[tuple[str, int, float]] = (),
    ) -> None:
        """`anthropic`: ANTHROPIC_BASE_URL when set apart from `upstream`; /v1/messages calls
        then have a breaker of their own ("anthropic"), else they share chat's. `upstreams`:
        (name, fail_max, reset_timeout_s) of each configured upstream; none: `default`."""
        self.transitions = 0
        self.last_change: dict[str, float] = {}
        self.last_failure: dict[str, tuple[float, str]] = {}
        self.opened_count: dict[str, int] = {}
        listener = _Transitions(self)
        self.upstream = upstream
        self.breakers: dict[str, Breaker] = {}
        self.upstream_of: dict[str, str] = {}  # breaker name -> its upstream's name
        for name, most, reset_s in upstreams or ((DEFAULT, fail_max, reset_timeout_s),):
            families = (*FAMILIES, ANTHROPIC) if anthropic and name == DEFAULT else FAMILIES
            for family in families:
                full = family if name == DEFAULT else f"{name}/{family}"
                self.breakers[full] = Breaker(full, most, reset_s, listener)
                self.upstream_of[full] = name
        self._messages = ANTHROPIC if anthropic else "chat"

    def for_endpoint(self, endpoint: str, upstream: str = DEFAULT) -> Breaker:
        if endpoint == Endpoint.MESSAGES:
            family = self._messages if upstream == DEFAULT else "chat"
        else:
            family = _FAMILY_BY_ENDPOINT.get(endpoint, "other")
        return self.breakers[family if upstream == DEFAULT else f"{upstream}/{family}"]

    def reset(self, name: str | None = None) -> dict[str, str]:
        """Closes one breaker (or all); the new states, by name."""
        for breaker in self.breakers.values():
            if name is None or breaker.name == name:
                breaker.reset()
        return {b.name: b.state for b in self.breakers.values()}
