"""Choosing the stored question a new one may be answered by: the most similar candidates of
its partition, at or above the threshold, checked by the guards (proxy/semantic/guards.py)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

from proxy.semantic.guards import Text, disagreement, read_text

# Candidates above the threshold the guards look at, most similar first. The first that passes
# is served: a paraphrase whose nearest neighbour is a hard negative of it still finds its own.
MAX_TRIES = 3


class Candidate(NamedTuple):
    digest: str  # the stored entry's key digest
    similarity: float
    text: str  # the stored question


def pick(
    question: Text,
    candidates: Sequence[Candidate],
    threshold: float,
    rejected: Callable[[str], None] | None = None,
) -> Candidate | None:
    """The best candidate at or above `threshold` that no guard rejects; `rejected` is told each
    guard that turned one away. `candidates` come most similar first."""
    for candidate in candidates[:MAX_TRIES]:
        if candidate.similarity < threshold:
            break
        guard = disagreement(question, read_text(candidate.text))
        if guard is None:
            return candidate
        if rejected is not None:
            rejected(guard)
    return None
