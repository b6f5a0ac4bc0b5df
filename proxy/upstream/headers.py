"""Which headers cross the proxy, in each direction."""

from __future__ import annotations

from collections.abc import Mapping

from multidict import CIMultiDict

# Set by the sidecar on an upstream's answer (proxy/upstream/attempt.py): which upstream
# answered, and the model's own upstream when the call fell back to another.
UPSTREAM_HEADER = "X-Upstream"
FALLBACK_HEADER = "X-Fallback-From"
# RFC 9110 §7.6.1 hop-by-hop headers, plus the ones the HTTP client sets for itself.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)
# Sidecar-only request headers: they steer the cache and never go upstream (they carry user ids).
_SIDECAR_PREFIXES = ("x-persona-", "x-cache-")
_SIDECAR_HEADERS = frozenset({"x-user-id", "x-priority", "authorization", "cache-control"})
# The client's other credentials (Azure's, Anthropic's): forwarded in pass-through mode only; in
# managed mode the sidecar's key is the one credential the upstream may see.
_CLIENT_CREDENTIALS = frozenset({"api-key", "x-api-key"})
# Answers of understood routes are decompressed and re-framed by the sidecar, so it asks for
# the encodings its HTTP client decodes, whatever the client accepts.
DECODABLE_ENCODINGS = "gzip, deflate"
_DECODED_BODY = frozenset({"content-encoding", "content-length"})
# The sidecar decodes every request body sent with a Content-Encoding (proxy/body.py, within
# bounds; on every route), so what goes upstream is the decoded body:
# forwarding its encoding made the upstream fail to read it, and its 5xx counted against the
# shared breaker. Forward what is sent.
# `Expect: 100-continue` was answered by the sidecar's server already; forwarded, it made the
# HTTP client wait for the upstream's 100 before sending the body, which some upstreams never
# send: a 10-byte request held an upstream connection for the whole read timeout (issue 23).
_DECODED_REQUEST = frozenset({"content-encoding", "expect"})


def _connection_listed(headers: Mapping[str, str]) -> frozenset[str]:
    listed = headers.get("Connection")
    if not listed:
        return frozenset()
    return frozenset(token.strip().lower() for token in listed.split(","))


def upstream_request_headers(
    client_headers: Mapping[str, str],
    authorization: str | None,
    *,
    keep_encoding: bool,
    managed: bool = False,
) -> CIMultiDict[str]:
    """Client headers fit to send upstream, with `authorization` as the credential.

    `keep_encoding`: the answer is relayed as is, so the client's Accept-Encoding (or its
    absence) goes upstream unchanged; otherwise the sidecar decodes the answer itself.
    `managed`: the client's own credential headers stay here."""
    dropped = _connection_listed(client_headers)
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in client_headers.items():
        lower = name.lower()
        if lower in HOP_BY_HOP or lower in _SIDECAR_HEADERS or lower in dropped:
            continue
        if lower in _DECODED_REQUEST:
            continue
        if lower.startswith(_SIDECAR_PREFIXES):
            continue
        if lower == "accept-encoding" and not keep_encoding:
            continue
        if managed and lower in _CLIENT_CREDENTIALS:
            continue
        out.add(name, value)
    if not keep_encoding:
        out["Accept-Encoding"] = DECODABLE_ENCODINGS
    if authorization:
        out["Authorization"] = authorization
    return out


def client_response_headers(
    upstream_headers: Mapping[str, str], *, decoded: bool
) -> CIMultiDict[str]:
    """Upstream answer headers fit to relay; `decoded` when the body was decompressed here."""
    dropped = _connection_listed(upstream_headers)
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in upstream_headers.items():
        lower = name.lower()
        if lower in HOP_BY_HOP and lower != "content-length":
            continue
        if lower in dropped or (decoded and lower in _DECODED_BODY):
            continue
        out.add(name, value)
    return out
