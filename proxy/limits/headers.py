"""The `x-ratelimit-*` headers OpenAI's API sends, from what the limiter decided for a request.

Set by the proxy's response signal (proxy/server.py) rather than by each handler: streamed
answers send their headers inside the handler, and the signal runs just before any answer's
headers go out (hits, misses and the sidecar's own errors alike)."""

from __future__ import annotations

from aiohttp import web
from multidict import CIMultiDict, istr

from proxy.limits.types import Decision, ScopeUse

RATE_DECISION = web.RequestKey("sidecache_rate_decision", Decision)
_LIMIT_REQUESTS = istr("x-ratelimit-limit-requests")
_REMAINING = istr("x-ratelimit-remaining-requests")
_RESET_REQUESTS = istr("x-ratelimit-reset-requests")
_LIMIT_TOKENS = istr("x-ratelimit-limit-tokens")
_REMAINING_TOKENS = istr("x-ratelimit-remaining-tokens")
_RESET_TOKENS = istr("x-ratelimit-reset-tokens")


def duration(ms: int) -> str:
    """OpenAI's (Go's) duration format: "20ms", "1s", "7.66s", "6m0s"."""
    if ms <= 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    minutes, rest = divmod(ms, 60_000)
    seconds = f"{rest / 1000:.3f}".rstrip("0").rstrip(".")
    return f"{minutes}m{seconds}s" if minutes else f"{seconds}s"


def rate_headers(decision: Decision) -> dict[str, str]:
    """Each trio only where a limit of its kind applies to the request."""
    headers = {str(name): value for name, value in _others(decision.base or decision).items()}
    if decision.requests is not None:
        headers[str(_REMAINING)] = _remaining(decision.requests, decision.left)
    return headers


def add_rate_headers(request: web.Request, headers: CIMultiDict[str]) -> None:
    """The headers of what was decided for `request`, when anything was, to its answer's: all
    but the remaining requests are made once per decision (every request served from one lease
    shares its decision's), so a leased hit adds a dict made already and one number."""
    decision = request.get(RATE_DECISION)
    if decision is None:
        return
    made = (decision.base or decision).headers
    headers.update(made if made is not None else _others(decision.base or decision))
    use = decision.requests
    if use is not None:
        remaining = use.limit - use.used + decision.left
        headers[_REMAINING] = str(remaining) if remaining > 0 else "0"


def _others(decision: Decision) -> dict[istr, str]:
    """The headers but `x-ratelimit-remaining-requests`, made once per decision (with `istr`
    names: a response's headers take them as they are, where a `str` is folded per answer)."""
    made = decision.headers
    if made is None:
        made = decision.headers = {}
        if decision.requests is not None:
            use = decision.requests
            made[_LIMIT_REQUESTS] = str(use.limit)
            made[_RESET_REQUESTS] = duration(use.reset_ms)
        if decision.tokens is not None:
            use = decision.tokens
            made[_LIMIT_TOKENS] = str(use.limit)
            made[_REMAINING_TOKENS] = _remaining(use, 0)
            made[_RESET_TOKENS] = duration(use.reset_ms)
    return made


def _remaining(use: ScopeUse, unused: int) -> str:
    return str(max(0, use.limit - use.used + unused))
