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


def _trio(headers: dict[str, str], kind: str, use: ScopeUse, unused: int = 0) -> None:
    headers[f"x-ratelimit-limit-{kind}"] = str(use.limit)
    headers[f"x-ratelimit-remaining-{kind}"] = _remaining(use, unused)
    headers[f"x-ratelimit-reset-{kind}"] = duration(use.reset_ms)


def rate_headers(decision: Decision) -> dict[str, str]:
    """Each trio only where a limit of its kind applies to the request (made once per
    decision: every request served from one lease shares its decision's)."""
    base = decision.base
    if base is not None and decision.requests is not None:
        return {**rate_headers(base), _REMAINING: _remaining(decision.requests, decision.left)}
    made = decision.headers
    if made is None:
        made = decision.headers = {}
        if decision.requests is not None:
            _trio(made, "requests", decision.requests, decision.left)
        if decision.tokens is not None:
            _trio(made, "tokens", decision.tokens)
    return made


def add_rate_headers(request: web.Request, response: web.StreamResponse) -> None:
    """The headers of what was decided for `request`, when anything was (a leased hit's are its
    lease's, made once, and its own remaining requests: no dict made per hit)."""
    decision = request.get(RATE_DECISION)
    if decision is None:
        return
    base = decision.base
    if base is not None and decision.requests is not None:
        headers = response.headers
        headers.update(rate_headers(base))
        headers[_REMAINING] = _remaining(decision.requests, decision.left)
    else:
        response.headers.update(rate_headers(decision))


def _remaining(use: ScopeUse, unused: int) -> str:
    return str(max(0, use.limit - use.used + unused))
