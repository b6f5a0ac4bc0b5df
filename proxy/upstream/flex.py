"""The flex lane (docs/design.md §11, UPSTREAM_FLEX): which upstream calls go at OpenAI's
`service_tier: "flex"` (cheaper, slower, may be refused when flex capacity is short), and when
such a call is retried at the standard tier.

A call is flex work when it is low priority (`X-Priority: low`; cache warming sends that), on
an endpoint with service tiers (chat, Responses), for a model matching one of
UPSTREAM_FLEX_MODELS' globs, and its client chose no `service_tier` itself. The tier is added
to the body sent upstream only: the cache key was made from the client's body, so the stored
answer serves standard requests too. After a 429 or a timeout at flex the call is made once
more exactly as the client asked (proxy/dispatch/runner.py), before any of it reached a client.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from fnmatch import fnmatchcase

import msgspec

from proxy.settings_upstream import UpstreamSettings
from proxy.upstream.exchange import UpstreamRequest
from proxy.upstream.gate import Priority
from proxy.vocabulary import Endpoint

FLEX = "flex"
# Statuses of a flex answer that send the call to the standard tier (timeouts too).
RETRY_AT_STANDARD = frozenset({429})
_TIERED = frozenset({Endpoint.CHAT.value, Endpoint.RESPONSES.value})
_decode = msgspec.json.Decoder().decode
_encode = msgspec.json.Encoder().encode


class _Tiered(msgspec.Struct):
    service_tier: str | None = None


_decode_tier = msgspec.json.Decoder(_Tiered).decode


class FlexLane:
    """Built at start-up when UPSTREAM_FLEX is on (`from_settings` is None when it is off)."""

    def __init__(self, models: Sequence[str]) -> None:
        self._models = tuple(models)

    @classmethod
    def from_settings(cls, settings: UpstreamSettings) -> FlexLane | None:
        return cls(settings.flex_models) if settings.flex else None

    def serves(self, model: str) -> bool:
        return any(fnmatchcase(model, glob) for glob in self._models)

    def at_flex(self, request: UpstreamRequest) -> UpstreamRequest | None:
        """`request` sent at the flex tier, or None when it is not flex work."""
        if request.priority is not Priority.LOW or request.endpoint not in _TIERED:
            return None
        if not isinstance(request.body, bytes):
            return None
        try:
            body = _decode(request.body)
        except msgspec.DecodeError:
            return None
        if not isinstance(body, dict) or body.get("service_tier") is not None:
            return None  # the client chose its tier
        model = body.get("model")
        if not isinstance(model, str) or not self.serves(model):
            return None
        return replace(request, body=_encode({**body, "service_tier": FLEX}))


def answer_tier(body: bytes) -> str | None:
    """The `service_tier` an answer body says served it (OpenAI: "default", "flex",
    "priority", ...), None when it says none or is not JSON."""
    try:
        return _decode_tier(body).service_tier
    except msgspec.DecodeError:  # ValidationError included: a tier that is not a string
        return None
