"""Deterministic content: reply words, embedding vectors, moderation scores and token counts.

Everything here is a pure function of its inputs, so the same request always gets the same
answer and a cache in front of the fake can be checked byte for byte.
"""

from __future__ import annotations

import base64
import hashlib
import math
import struct
from typing import Any

import msgspec

DEFAULT_REPLY_WORDS = 24
MAX_REPLY_WORDS = 4096
DEFAULT_EMBEDDING_DIMENSIONS = 8
MESSAGE_OVERHEAD_TOKENS = 3

_WORDS = (
    "the a learner lesson answer question idea step example practice review concept "
    "method pattern cache model token budget persona summary detail context reason result "
    "value change simple clear quick careful useful next first second final short long "
    "small large better helpful steady gentle direct focused visual written spoken hands-on "
    "topic skill goal plan check note draft outline chapter section point fact rule case"
)
_VOCABULARY = tuple(_WORDS.split())

_CANONICAL = msgspec.json.Encoder(order="deterministic")

# Fields that never change the answer (the same set Sidecache leaves out of its cache key).
_NON_SEMANTIC = frozenset({"stream", "stream_options", "user", "metadata", "store"})

MODERATION_CATEGORIES = (
    "harassment",
    "harassment/threatening",
    "hate",
    "hate/threatening",
    "illicit",
    "illicit/violent",
    "self-harm",
    "self-harm/instructions",
    "self-harm/intent",
    "sexual",
    "sexual/minors",
    "violence",
    "violence/graphic",
)
# The categories omni-moderation also scores on images.
_IMAGE_CATEGORIES = frozenset(
    {"self-harm", "self-harm/instructions", "self-harm/intent"}
    | {"sexual", "violence", "violence/graphic"}
)
_FLAG_WORDS = {
    "kill": ("violence",),
    "hate": ("hate",),
    "harass": ("harassment",),
    "suicide": ("self-harm", "self-harm/intent"),
}


def request_seed(body: dict[str, Any]) -> bytes:
    """A digest of the semantic part of a request body."""
    semantic = {k: v for k, v in body.items() if k not in _NON_SEMANTIC}
    return hashlib.sha256(_CANONICAL.encode(semantic)).digest()


def _hash_bytes(seed: bytes, size: int) -> bytes:
    """`size` pseudo-random bytes expanded from `seed` (SHA-256 in counter mode)."""
    blocks = (size + 31) // 32
    out = b"".join(hashlib.sha256(seed + i.to_bytes(8, "little")).digest() for i in range(blocks))
    return out[:size]


def reply_words(seed: bytes, index: int, count: int) -> list[str]:
    """`count` words for choice `index`; the first is capitalised and the last ends with '.'."""
    picks = _hash_bytes(seed + b"choice" + index.to_bytes(8, "little"), count)
    words = [_VOCABULARY[b % len(_VOCABULARY)] for b in picks]
    if words:
        words[0] = words[0].capitalize()
        words[-1] += "."
    return words


def word_deltas(words: list[str]) -> list[str]:
    """Stream pieces that join back to `" ".join(words)`."""
    return [w if i == 0 else " " + w for i, w in enumerate(words)]


def count_words(text: str) -> int:
    return len(text.split())


def content_text(content: Any) -> str:
    """The text of a chat message's content (a string or a list of parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [p.get("text", "") for p in content if isinstance(p, dict)]
        return " ".join(p for p in parts if isinstance(p, str))
    return ""


def chat_prompt_tokens(messages: list[dict[str, Any]]) -> int:
    """Words in every message's content plus a fixed overhead per message."""
    return sum(
        count_words(content_text(m.get("content"))) + MESSAGE_OVERHEAD_TOKENS for m in messages
    )


def item_tokens(item: str | list[int]) -> int:
    """Tokens of one embedding/completion input: its words, or its token array's length."""
    if isinstance(item, str):
        return max(1, count_words(item))
    return len(item)


def embedding_vector(model: str, dimensions: int, item: str | list[int]) -> list[float]:
    """A unit vector that depends only on (model, dimensions, item), rounded to float32."""
    key = item if isinstance(item, str) else ",".join(map(str, item))
    kind = b"s" if isinstance(item, str) else b"t"
    seed = b"\0".join((model.encode(), str(dimensions).encode(), kind, key.encode()))
    ints = struct.unpack(f"<{dimensions}I", _hash_bytes(seed, 4 * dimensions))
    raw = [n / 2**31 - 1.0 for n in ints]
    norm = math.sqrt(sum(v * v for v in raw)) or 1.0
    packed = struct.pack(f"<{dimensions}f", *(v / norm for v in raw))
    return list(struct.unpack(f"<{dimensions}f", packed))


def encode_base64(vector: list[float]) -> str:
    """Little-endian float32 bytes, base64-encoded (what the SDK decodes by default)."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")


def _unit(seed: bytes, label: str) -> float:
    digest = hashlib.sha256(seed + label.encode()).digest()
    return int.from_bytes(digest[:4], "little") / 2**32


def moderation_result(text: str, has_image: bool = False) -> dict[str, Any]:
    """Flags a category when its trigger word appears; scores are stable per text."""
    lowered = text.lower()
    hit = {cat for word, cats in _FLAG_WORDS.items() if word in lowered for cat in cats}
    seed = hashlib.sha256(text.encode()).digest()
    scores = {
        cat: round(0.9 + 0.09 * _unit(seed, cat) if cat in hit else 0.01 * _unit(seed, cat), 6)
        for cat in MODERATION_CATEGORIES
    }
    applied = {
        cat: ["text", "image"] if has_image and cat in _IMAGE_CATEGORIES else ["text"]
        for cat in MODERATION_CATEGORIES
    }
    return {
        "flagged": bool(hit),
        "categories": {cat: cat in hit for cat in MODERATION_CATEGORIES},
        "category_scores": scores,
        "category_applied_input_types": applied,
    }
