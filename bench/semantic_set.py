"""The labelled set of learners' questions (tests/data/semantic_pairs.jsonl) and how the semantic
cache's matching is scored on it; `make bench` and tests/test_semantic_quality.py both use it.

Each group holds an anchor (the question asked first, so the one in the cache), one close
paraphrase (the same question retyped: fillers, contractions, light verbs, typos), two reworded
paraphrases (all three must hit the anchor) and two hard negatives (same topic and words,
another question: must not hit). The groups with odd numbers are the tuning half: the default
threshold and the verifier were fitted on them. The even ones are held out, only measured.

Scoring puts every anchor of a half in ONE partition, harsher than real traffic (where the
model, persona and earlier turns split them), and asks each paraphrase and negative:
- recall: a paraphrase served its own anchor's answer (also given for close ones alone);
- wrong hit: a paraphrase served another anchor's answer;
- false hit: a hard negative served any answer.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import numpy as np
from numpy.typing import NDArray

from proxy.semantic.guards import read_text
from proxy.semantic.match import Candidate, pick

PAIRS = Path(__file__).resolve().parent.parent / "tests" / "data" / "semantic_pairs.jsonl"
Encode = Callable[[Sequence[str]], NDArray[np.float32]]
CLOSE = "close"  # the marker of a close paraphrase among the scored queries


class Negative(msgspec.Struct):
    text: str
    kind: str = msgspec.field(name="class")


class Group(msgspec.Struct):
    id: str
    topic: str
    anchor: str
    paraphrases: list[str]
    negatives: list[Negative]
    close: list[str] = []

    @property
    def same(self) -> list[str]:
        """Every text that asks what the anchor asks."""
        return [*self.close, *self.paraphrases]

    @property
    def tuning(self) -> bool:
        return int(self.id.split("-")[1]) % 2 == 1


def load_groups(path: Path = PAIRS) -> list[Group]:
    decode = msgspec.json.Decoder(Group).decode
    return [decode(line) for line in path.read_bytes().splitlines() if line.strip()]


@dataclass
class Score:
    paraphrases: int = 0
    negatives: int = 0
    recalled: int = 0
    closes: int = 0
    close_recalled: int = 0
    wrong: int = 0
    false: int = 0
    false_by_class: Counter[str] = field(default_factory=Counter)
    rejected_by: Counter[str] = field(default_factory=Counter)

    @property
    def recall(self) -> float:
        return self.recalled / self.paraphrases

    @property
    def close_recall(self) -> float:
        return self.close_recalled / self.closes if self.closes else 0.0

    @property
    def wrong_rate(self) -> float:
        return self.wrong / self.paraphrases

    @property
    def false_rate(self) -> float:
        return self.false / self.negatives


class Scorer:
    """Embeds a half of the set once, then scores any threshold with or without the guards."""

    def __init__(self, groups: Sequence[Group], encode: Encode) -> None:
        self.groups = list(groups)
        self.anchors = [g.anchor for g in self.groups]
        self._anchor_vectors = encode(self.anchors)
        # (group, text, negative class: None for a paraphrase, CLOSE for a close one)
        self._queries: list[tuple[int, str, str | None]] = []
        for i, group in enumerate(self.groups):
            self._queries += [(i, text, CLOSE) for text in group.close]
            self._queries += [(i, text, None) for text in group.paraphrases]
            self._queries += [(i, neg.text, neg.kind) for neg in group.negatives]
        vectors = encode([text for _, text, _ in self._queries])
        self._similarities = vectors @ self._anchor_vectors.T

    def score(self, threshold: float, *, guarded: bool = True) -> Score:
        result = Score()
        for (group, text, kind), sims in zip(self._queries, self._similarities, strict=True):
            order = np.argsort(-sims)
            served = self._served(text, sims, order, threshold, guarded, result.rejected_by)
            if kind is None or kind is CLOSE:
                result.paraphrases += 1
                result.recalled += served == group
                result.wrong += served is not None and served != group
                if kind is CLOSE:
                    result.closes += 1
                    result.close_recalled += served == group
            else:
                result.negatives += 1
                if served is not None:
                    result.false += 1
                    result.false_by_class[kind] += 1
        return result

    def _served(
        self,
        text: str,
        sims: NDArray[np.float32],
        order: NDArray[np.intp],
        threshold: float,
        guarded: bool,
        rejected_by: Counter[str],
    ) -> int | None:
        if not guarded:
            best = int(order[0])
            return best if sims[best] >= threshold else None
        candidates = [Candidate(str(i), float(sims[i]), self.anchors[i]) for i in order[:5]]
        chosen = pick(read_text(text), candidates, threshold, lambda g: rejected_by.update([g]))
        return None if chosen is None else int(chosen.digest)


def halves(groups: Sequence[Group]) -> tuple[list[Group], list[Group]]:
    """(tuning, held out)"""
    return [g for g in groups if g.tuning], [g for g in groups if not g.tuning]
