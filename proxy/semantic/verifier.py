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
BIAS = 2.104
SIMILARITY = 1.880
WEIGHTS = {
    "number": -2.047, "number_one_side": -1.960, "unit": -0.211, "negation": -1.988,
    "antonym": -5.039, "entity": -1.013, "entity_one_side": -1.511, "direction": -0.382,
    "order": 0.191, "task": -1.287, "audience": -2.064, "edit": -6.117,
    "substitution": -2.514, "unmatched": 3.159,
}  # fmt: skip
CUT = 0.95


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
    """None when `stored`'s answer may be served for `new`; else the reason: the signal that
    weighed most against the pair ("number", "entity", …, "similarity")."""
    found = features(new, stored, similarity)
    weights = _all_weights()
    if probability(found, BIAS, weights) >= CUT:
        return None
    return min(found, key=lambda name: weights.get(name, 0.0) * found[name])


def _all_weights() -> dict[str, float]:
    return {"similarity": SIMILARITY} | WEIGHTS
