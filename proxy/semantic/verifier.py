"""The verifier: whether a candidate above the threshold asks the same thing as the new question
(docs/design.md §10). A logistic regression over the similarity and the guards' signals
(proxy/semantic/guards.py `signals`), its weights fitted by bench/train_verifier.py on the tuning
half of tests/data/semantic_pairs.jsonl and pasted here; CUT was chosen there for at most 1 %
false hits. Microseconds per pair, no model call.
"""

from __future__ import annotations

import math

from proxy.semantic.guards import Text, signals

# bench/train_verifier.py prints these: the bias, the similarity and one weight per signal.
BIAS = 2.554
SIMILARITY = 1.461
WEIGHTS = {
    "number": -1.887, "number_one_side": -1.555, "unit": -0.381, "negation": -1.394,
    "antonym": -4.706, "entity": -0.776, "entity_one_side": -1.698, "direction": -0.244,
    "order": 0.927, "task": -1.133, "audience": -4.760, "edit": -6.344,
    "substitution": -2.213, "unmatched": 2.689,
}  # fmt: skip
# Signals precise enough to refuse alone: on the tuning half each fires on hard negatives only
# (antonym 15, audience 10) and never on a paraphrase.
VETOES = ("antonym", "audience")
CUT = 0.90


def features(new: Text, stored: Text, similarity: float) -> dict[str, float]:
    """The inputs the weights apply to; the similarity is centred and scaled like the rest."""
    return {"similarity": (similarity - 0.8) * 10} | signals(new, stored)


def probability(
    found: dict[str, float],
    bias: float = BIAS,
    weights: dict[str, float] | None = None,
) -> float:
    weights = _all_weights() if weights is None else weights
    z = bias + sum(weights.get(name, 0.0) * value for name, value in found.items())
    return 1.0 / (1.0 + math.exp(-max(-50.0, min(50.0, z))))


def verdict(new: Text, stored: Text, similarity: float) -> str | None:
    """None when `stored`'s answer may be served for `new`; else the reason: a veto, or the
    signal that weighed most against the pair ("number", "entity", …, "similarity")."""
    found = features(new, stored, similarity)
    for veto in VETOES:
        if found[veto]:
            return veto
    weights = _all_weights()
    if probability(found, BIAS, weights) >= CUT:
        return None
    return min(found, key=lambda name: weights.get(name, 0.0) * found[name])


def _all_weights() -> dict[str, float]:
    return {"similarity": SIMILARITY} | WEIGHTS
