"""Embedding vectors as stored (little-endian float32 bytes) and as served (float or base64)."""

from __future__ import annotations

import base64
import sys
from array import array

_SWAP = sys.byteorder != "little"


def from_wire(embedding: str | list[float]) -> bytes:
    """An upstream embedding (base64 float32, or a float list) as little-endian float32 bytes."""
    if isinstance(embedding, str):
        return base64.b64decode(embedding, validate=True)
    values = array("f", embedding)
    if _SWAP:
        values.byteswap()
    return values.tobytes()


def to_wire(vector: bytes, encoding_format: str) -> str | list[float]:
    if encoding_format == "base64":
        return base64.b64encode(vector).decode("ascii")
    values = array("f")
    values.frombytes(vector)
    if _SWAP:
        values.byteswap()
    return values.tolist()


def apportion(total: int, weights: list[int]) -> list[int]:
    """Splits `total` into whole parts proportional to `weights` that add up to `total` exactly
    (largest remainder), e.g. one upstream call's token usage over the inputs it carried."""
    weight_sum = sum(weights)
    if not weights:
        return []
    if weight_sum <= 0:
        weights = [1] * len(weights)
        weight_sum = len(weights)
    exact = [total * w / weight_sum for w in weights]
    parts = [int(x) for x in exact]
    by_remainder = sorted(range(len(weights)), key=lambda i: exact[i] - parts[i], reverse=True)
    for i in by_remainder[: total - sum(parts)]:
        parts[i] += 1
    return parts
