"""The `x-ratelimit-*` headers OpenAI's API sends, from what the limiter decided for a request.

Set by a response signal rather than by each handler: streamed answers send their headers
inside the handler, and the signal runs just before any answer's headers go out (hits, misses
and the sidecar's own errors alike)."""

from __future__ import annotations

from aiohttp import web

from proxy.limits.types import Decision, ScopeUse

RATE_DECISION = web.RequestKey("sidecache_rate_decision", Decision)


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
    headers[f"x-ratelimit-remaining-{kind}"] = str(max(0, use.limit - use.used + unused))
    headers[f"x-ratelimit-reset-{kind}"] = duration(use.reset_ms)


def rate_headers(decision: Decision) -> dict[str, str]:
    """Each trio only where a limit of its kind applies to the request (made once per
    decision: every request served from one lease shares its decision's)."""
    base = decision.base
    if base is not None and decision.requests is not None:
        headers = {**rate_headers(base)}
        use = decision.requests
        headers["x-ratelimit-remaining-requests"] = str(
            max(0, use.limit - use.used + decision.left)
        )
        return headers
    made = decision.headers
    if made is None:
        made = decision.headers = {}
        if decision.requests is not None:
            _trio(made, "requests", decision.requests, decision.left)
        if decision.tokens is not None:
            _trio(made, "tokens", decision.tokens)
    return made


class RateHeaders:
    """The response signal: a request that no limit applies to holds no decision."""

    async def __call__(self, request: web.Request, response: web.StreamResponse) -> None:
        decision = request.get(RATE_DECISION)
        if decision is not None:
            response.headers.update(rate_headers(decision))
