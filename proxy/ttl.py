"""How long an entry lives (docs/design.md §3): a base per kind, shortened by personalisation,
clamped."""

from __future__ import annotations

from enum import StrEnum

from proxy.settings import Settings


class Kind(StrEnum):
    CHAT_SAMPLED = "chat_sampled"
    CHAT_DETERMINISTIC = "chat_deterministic"
    EMBEDDINGS = "embeddings"
    MODERATIONS = "moderations"


class TtlPolicy:
    def __init__(self, settings: Settings) -> None:
        ttl = settings.ttl
        chat = float(settings.cache.default_ttl)
        self._base = {
            Kind.CHAT_SAMPLED: chat,
            Kind.CHAT_DETERMINISTIC: chat * ttl.deterministic_factor,
            Kind.EMBEDDINGS: float(ttl.embeddings),
            Kind.MODERATIONS: float(ttl.moderations),
        }
        self._cut = ttl.personalisation_cut
        self.min = ttl.min
        self.max = ttl.max

    def seconds(self, kind: Kind, personalisation: float, max_age: int | None = None) -> int:
        """`personalisation` is the persona score, 0.0-1.0: the more personal, the shorter."""
        if max_age is not None:
            return self.clamp(max_age)
        return self.clamp(round(self._base[kind] * (1.0 - self._cut * personalisation)))

    def clamp(self, seconds: int) -> int:
        return max(self.min, min(self.max, seconds))


def chat_kind(temperature: float | None, seed: int | None) -> Kind:
    """Deterministic chat (temperature 0 or a seed) may live longer than sampled chat."""
    if seed is not None or temperature == 0:
        return Kind.CHAT_DETERMINISTIC
    return Kind.CHAT_SAMPLED
