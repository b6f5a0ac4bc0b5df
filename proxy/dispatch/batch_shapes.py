"""What micro-batching is made of (proxy/dispatch/batcher.py): which requests may share a
call (`BatchKey`), how an endpoint's merged answer is taken apart (`BatchKind`, `Split`),
what each request gets back (`Share`, or the upstream's error `Answer`) and whether an
upstream 400 may be one input's fault (`blames_input`).

Answers that came from a batch carry the response header `X-Batch-Size: N`, the number of
requests that shared the upstream call (1 for a request that had nobody to share with).
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec
from multidict import CIMultiDict

BATCH_SIZE_HEADER = "X-Batch-Size"
# Body fields that never split a batch: the input itself, and what is answered per request.
UNBATCHED_FIELDS = frozenset({"input", "encoding_format", "user"})
# Headers that choose the upstream account a call is billed to, besides Authorization.
_ACCOUNT_HEADERS = ("OpenAI-Organization", "OpenAI-Project")
_encode = msgspec.json.Encoder(order="sorted").encode
_decode_error = msgspec.json.Decoder().decode


@dataclass(frozen=True, slots=True)
class BatchKey:
    endpoint: str
    path: str
    params: bytes  # canonical JSON of the body without UNBATCHED_FIELDS
    account: bytes  # digest of the upstream credential and account headers


def batch_key(
    endpoint: str,
    path: str,
    params: Mapping[str, Any],
    authorization: str | None,
    headers: Mapping[str, str],
) -> BatchKey:
    """Requests with equal keys may share an upstream call. Pass-through tenants never do (their
    credentials differ); managed-mode tenants do, as they share the one upstream key."""
    account = "\0".join([authorization or "", *(headers.get(h, "") for h in _ACCOUNT_HEADERS)])
    return BatchKey(endpoint, path, _encode(params), hashlib.blake2b(account.encode()).digest())


@dataclass(frozen=True, slots=True)
class Split:
    """A merged call's answer taken apart: one part per input, in order."""

    parts: list[Any]
    rest: dict[str, Any]  # the answer's other fields every request shares (model, id)
    prompt_tokens: int | None  # the call's usage; None when the answer has none


@dataclass(frozen=True, slots=True)
class BatchKind:
    """How one endpoint is batched."""

    endpoint: str
    split: Callable[[bytes, int], Split]  # raises ValueError for an answer that does not fit
    max_inputs: int = 2048
    # Upper bound of a call's input tokens, counted as UTF-8 bytes (a token is at least one).
    max_tokens: int | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)  # fields set on every merged call


@dataclass(frozen=True, slots=True)
class Share:
    """One request's piece of a merged call's answer."""

    part: Any
    tokens: int  # this request's part of the call's prompt tokens (the parts add up to it)
    item_tokens: int  # its input's whole part (what a cached copy of that input saves)
    rest: dict[str, Any]
    headers: CIMultiDict[str]  # relayable upstream headers, shared: copy before changing
    requests: int  # requests that shared the call (X-Batch-Size)
    has_usage: bool


def blames_input(body: bytes) -> bool:
    """Whether a 400 may be one input's fault (then bisecting finds it); a 400 naming another
    parameter is every request's, since they all share it."""
    with contextlib.suppress(msgspec.DecodeError):
        decoded = _decode_error(body)
        error = decoded.get("error") if isinstance(decoded, dict) else None
        if isinstance(error, dict):
            param = error.get("param")
            return param is None or (isinstance(param, str) and param.startswith("input"))
    return True
