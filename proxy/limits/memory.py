"""The rate limits' logs in this process, used without Redis: the same sliding log as the
Redis script keeps (proxy/limits/redis_backend.py), per process."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence

from proxy.limits.types import Counted, Scope


class _Log:
    """One scope's log in memory: request times, token entries and their running sum."""

    __slots__ = ("amounts", "requests", "tokens", "tokens_sum")

    def __init__(self) -> None:
        self.requests: deque[int] = deque()
        self.tokens: deque[tuple[int, str]] = deque()
        self.amounts: dict[str, int] = {}
        self.tokens_sum = 0

    def trim(self, since: int) -> None:
        while self.requests and self.requests[0] <= since:
            self.requests.popleft()
        while self.tokens and self.tokens[0][0] <= since:
            _, member = self.tokens.popleft()
            self.tokens_sum -= self.amounts.pop(member, 0)

    def requests_retry(self, limit: int, window: int, now: int) -> int:
        """Until enough requests leave the window for one more to fit."""
        return self.requests[len(self.requests) - limit] + window - now

    def tokens_retry(self, limit: int, wanted: int, window: int, now: int) -> int:
        if wanted > limit:
            return window
        left = self.tokens_sum + wanted - limit
        for at, member in self.tokens:
            left -= self.amounts.get(member, 0)
            if left <= 0:
                return at + window - now
        return window


class MemoryCounter:
    """Per process, without Redis: the same log as the Redis script keeps."""

    backend = "memory"

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._logs: dict[str, _Log] = {}
        self._clock = clock

    def _now(self) -> int:
        return int(self._clock() * 1000)

    def take(
        self,
        scopes: Sequence[Scope],
        member: str,
        requests: int,
        tokens: int,
        window_ms: int,
        lease_ms: int = 0,
    ) -> Awaitable[Counted]:
        """In memory there is nothing to save by leasing: one request at a time."""
        return _done(self._take(scopes, member, min(requests, 1), tokens, window_ms))

    def _take(
        self, scopes: Sequence[Scope], member: str, requests: int, tokens: int, window: int
    ) -> Counted:
        now = self._now()
        logs = [self._logs.setdefault(s.key, _Log()) for s in scopes]
        retry = 0
        for scope, log in zip(scopes, logs, strict=True):
            log.trim(now - window)
            if requests and scope.rpm and len(log.requests) + requests > scope.rpm:
                retry = max(retry, log.requests_retry(scope.rpm, window, now))
            if tokens and scope.tpm and log.tokens_sum + tokens > scope.tpm:
                retry = max(retry, log.tokens_retry(scope.tpm, tokens, window, now))
        if not retry:
            for scope, log in zip(scopes, logs, strict=True):
                if requests and scope.rpm:
                    log.requests.append(now)
                if tokens and scope.tpm:
                    log.tokens.append((now, member))
                    log.amounts[member] = tokens
                    log.tokens_sum += tokens
        out = [0 if retry else 1, retry]
        for log in logs:
            reset_r = log.requests[-1] + window - now if log.requests else 0
            reset_t = log.tokens[-1][0] + window - now if log.tokens else 0
            out += [len(log.requests), reset_r, log.tokens_sum, reset_t]
        out.append(0 if retry else requests)
        for scope in scopes:  # forget scopes with nothing left in their window
            log = self._logs[scope.key]
            if not log.requests and not log.tokens:
                del self._logs[scope.key]
        return out

    async def correct(
        self, scopes: Sequence[Scope], member: str, tokens: int, window_ms: int
    ) -> None:
        for scope in scopes:
            log = self._logs.get(scope.key)
            if log is not None and member in log.amounts:
                log.tokens_sum += tokens - log.amounts[member]
                log.amounts[member] = tokens


async def _done(value: Counted) -> Counted:
    return value
