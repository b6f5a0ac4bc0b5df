"""The `x-ratelimit-*` headers OpenAI's API sends, from what the limiter decided for a request.

Set by the proxy's response signal (proxy/server.py) rather than by each handler: streamed
answers send their headers inside the handler, and the signal runs just before any answer's
headers go out (hits, misses and the sidecar's own errors alike)."""

from __future__ import annotations

from aiohttp import web

from proxy.limits.types import Decision, ScopeUse

RATE_DECISION = web.RequestKey("sidecache_rate_decision", Decision)
_REMAINING = "x-ratelimit-remaining-requests"


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
    headers = dict(_others(decision.base or decision))
    if decision.requests is not None:
        headers[_REMAINING] = _remaining(decision.requests, decision.left)
    return headers


def add_rate_headers(request: web.Request, response: web.StreamResponse) -> None:
    """The headers of what was decided for `request`, when anything was: all but the remaining
    requests are made once per decision (every request served from one lease shares its
    decision's), so a leased hit adds a dict made already and one number."""
    decision = request.get(RATE_DECISION)
    if decision is None:
        return
    headers = response.headers
    headers.update(_others(decision.base or decision))
    if decision.requests is not None:
        headers[_REMAINING] = _remaining(decision.requests, decision.left)


def _others(decision: Decision) -> dict[str, str]:
    """The headers but `x-ratelimit-remaining-requests`, made once per decision."""
    made = decision.headers
    if made is None:
        made = decision.headers = {}
        if decision.requests is not None:
            use = decision.requests
            made["x-ratelimit-limit-requests"] = str(use.limit)
            made["x-ratelimit-reset-requests"] = duration(use.reset_ms)
        if decision.tokens is not None:
            use = decision.tokens
            made["x-ratelimit-limit-tokens"] = str(use.limit)
            made["x-ratelimit-remaining-tokens"] = _remaining(use, 0)
            made["x-ratelimit-reset-tokens"] = duration(use.reset_ms)
    return made


def _remaining(use: ScopeUse, unused: int) -> str:
    return str(max(0, use.limit - use.used + unused))
