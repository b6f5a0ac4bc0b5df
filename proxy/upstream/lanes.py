"""One upstream as calls reach it (proxy/upstream/guarded.py): its client (base URL), its gate
and its credential; and a request body made once, asked for another model by a fallback."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import msgspec
from multidict import CIMultiDict

from proxy.upstream.client import UpstreamClient
from proxy.upstream.gate import UpstreamGate

# Every header a client's credential may travel in: none of them reaches an upstream that has
# a key of its own (managed credential, `api_key_env`).
_CREDENTIALS = frozenset({"authorization", "api-key", "x-api-key"})
_decode = msgspec.json.Decoder().decode
_encode = msgspec.json.Encoder().encode


@dataclass(frozen=True, slots=True)
class Lane:
    name: str
    client: UpstreamClient
    gate: UpstreamGate
    key: str | None = None  # this upstream's own key; None: the request's credential goes
    azure: bool = False  # the key goes as `api-key`, not `Authorization: Bearer`

    def headers(self, headers: Mapping[str, str]) -> Mapping[str, str]:
        if self.key is None:
            return headers
        out = CIMultiDict((k, v) for k, v in headers.items() if k.lower() not in _CREDENTIALS)
        if self.azure:
            out["api-key"] = self.key
        else:
            out["Authorization"] = f"Bearer {self.key}"
        return out


class RequestBody:
    """The body of a call, made when its first try gets a slot (a micro-batch leaves out the
    clients that left while it waited) and kept for the tries after it."""

    def __init__(self, body: bytes | Callable[[], bytes]) -> None:
        self._make = body
        self._made: bytes | None = body if isinstance(body, bytes) else None

    def for_model(self, model: str | None) -> bytes:
        """The body, with its `model` replaced when a fallback names another one."""
        if self._made is None:
            assert not isinstance(self._make, bytes)
            self._made = self._make()
        if model is None:
            return self._made
        value = _decode(self._made)
        if not isinstance(value, dict):
            return self._made
        return _encode({**value, "model": model})
