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
    return {str(name): value for name, value in _made(decision).items()}


class RatedResponse(web.Response):
    """A JSON answer that writes its `x-ratelimit-*` headers itself, as bytes made once per
    decision (`rate_lines`), after the headers aiohttp writes. aiohttp serialises a header a
    character at a time: the six, with the multidict update before, cost a hit about 3 % of its
    instructions; the lines, a slice.
    The hit path's, where a decision comes from a lease (proxy/handlers/answers.py)."""

    # A slot: an attribute set after __init__ would un-share the instance's dict, and every
    # attribute aiohttp reads on the answer would cost more.
    __slots__ = ("rate_lines",)
    rate_lines: bytes

    async def _write_headers(self) -> None:
        """aiohttp's own (StreamResponse._write_headers), with the lines added at the end of
        the header block, which a Response buffers until its body goes out with it."""
        version = self._req.version  # type: ignore[union-attr]
        status_line = f"HTTP/{version[0]}.{version[1]} {self._status} {self._reason}"
        writer = self._payload_writer
        await writer.write_headers(status_line, self._headers)  # type: ignore[union-attr]
        writer._headers_buf = writer._headers_buf[:-2] + self.rate_lines  # type: ignore[union-attr]


def rated_response(body: bytes, headers: dict[str, str], decision: Decision) -> RatedResponse:
    """`decision`'s headers as lines ending the header block (its blank line included)."""
    response = RatedResponse(body=body, headers=headers)
    lines = decision.lines  # `_lines` inlined: the hit path
    response.rate_lines = _lines(decision) if lines is None else lines
    return response


def _lines(decision: Decision) -> bytes:
    """The headers of `_made` as lines, then the blank line ending the block; made once per
    decision (every request served from one lease shares its decision's)."""
    made = decision.lines
    if made is None:
        pairs = _made(decision).items()
        made = decision.lines = b"".join(f"{n}: {v}\r\n".encode() for n, v in pairs) + b"\r\n"
    return made


def add_rate_headers(request: web.Request, headers: CIMultiDict[str]) -> None:
    """The headers of what was decided for `request`, when anything was, to its answer's: made
    once per decision. A leased JSON hit writes its own (`RatedResponse`)."""
    decision = request.get(RATE_DECISION)
    if decision is not None:
        headers.update(_made(decision))


def _made(decision: Decision) -> dict[istr, str]:
    """The headers, made once per decision (with `istr` names: a response's headers take them
    as they are, where a `str` is folded per answer)."""
    made = decision.headers
    if made is None:
        made = decision.headers = {}
        if decision.requests is not None:
            use = decision.requests
            made[_LIMIT_REQUESTS] = str(use.limit)
            made[_REMAINING] = str(_remaining(use))
            made[_RESET_REQUESTS] = duration(use.reset_ms)
        if decision.tokens is not None:
            use = decision.tokens
            made[_LIMIT_TOKENS] = str(use.limit)
            made[_REMAINING_TOKENS] = str(_remaining(use))
            made[_RESET_TOKENS] = duration(use.reset_ms)
    return made


def _remaining(use: ScopeUse) -> int:
    """What `use`'s limit has left: never below 0 (the count may run over the limit, e.g.
    leased slots counted before their use)."""
    return max(0, use.limit - use.used)
