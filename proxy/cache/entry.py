"""The stored-entry format: compact msgpack (never pickle), with what invalidation and the
ledger need to know about an entry besides its body."""

from __future__ import annotations

import msgspec


class EntryMeta(msgspec.Struct, array_like=True, frozen=True):
    tenant: str
    endpoint: str
    model: str
    scope: str  # persona | user | tenant
    user_id: str | None
    # The persona dimensions that keyed the entry; for a user-scoped entry, the whole persona
    # it was made for (a change of it invalidates the user's entries, docs/design.md §3).
    persona: dict[str, str]
    # The invalidation generation this replica knew when the miss began: rules of a later
    # generation that match this meta make the entry stale (proxy/invalidation).
    generation: int = 0


class StoredResponse(msgspec.Struct, array_like=True):
    """A whole JSON answer (chat.completion, text_completion, moderation), as the client gets it
    for `stream: false`; streamed hits are replayed from it as SSE."""

    body: bytes
    stored_at: float  # epoch seconds
    meta: EntryMeta
    # The call's tokens as wire.Usage counts them (prompt: every input token, cached reads
    # and cache writes included; completion: every output token, reasoning included).
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    # Appended with issue 14 (entries stored before decode with these defaults): cache
    # writes and reasoning tokens, priced at their own rates, and the service tier that served
    # the call (None: standard), so a hit saves what the answer really cost.
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    service_tier: str | None = None


class StoredVector(msgspec.Struct, array_like=True):
    """One embedding input's vector as little-endian float32 bytes."""

    vector: bytes
    tokens: int
    stored_at: float
    meta: EntryMeta


_encoder = msgspec.msgpack.Encoder()
_response_decoder = msgspec.msgpack.Decoder(StoredResponse)
_vector_decoder = msgspec.msgpack.Decoder(StoredVector)


def encode_entry(entry: StoredResponse | StoredVector) -> bytes:
    return _encoder.encode(entry)


def decode_response(raw: bytes) -> StoredResponse | None:
    """None for bytes that are not a stored response: a broken entry is a miss, never a 500."""
    try:
        return _response_decoder.decode(raw)
    except msgspec.DecodeError:
        return None


def decode_vector(raw: bytes) -> StoredVector | None:
    try:
        return _vector_decoder.decode(raw)
    except msgspec.DecodeError:
        return None
