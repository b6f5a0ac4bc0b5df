"""Choosing the stored question a new one may be answered by: the most similar candidates of
its partition, at or above the threshold, checked by the verifier (proxy/semantic/verifier.py)
that weighs the guards' signals (proxy/semantic/guards.py)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

from proxy.semantic.guards import Text, read_text
from proxy.semantic.verifier import verdict

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
    """The best candidate at or above `threshold` the verifier accepts; `rejected` is told the
    reason (the signal that weighed most) for each one turned away. `candidates` come most
    similar first."""
    for candidate in candidates[:MAX_TRIES]:
        if candidate.similarity < threshold:
            break
        guard = verdict(question, read_text(candidate.text), candidate.similarity)
        if guard is None:
            return candidate
        if rejected is not None:
            rejected(guard)
    return None
