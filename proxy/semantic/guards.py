"""The guards a semantic candidate must pass besides its similarity (docs/design.md §10).

Embeddings are nearly blind to the words that change an answer while leaving the topic alone:
"convert miles to km" and "convert km to miles" score 0.99 on MiniLM. Each guard compares one
such class of words between the new question and the stored one, and names itself when the two
disagree. What each one costs in recall, measured on tests/data/semantic_pairs.jsonl, is in the
README ("Semantic cache"). Pure functions: microseconds per pair, on the miss path only.
"""

from __future__ import annotations

import itertools
import re
from difflib import SequenceMatcher
from typing import NamedTuple

from proxy.semantic.lexicon import (
    ALIASES,
    ANTONYMS,
    AUDIENCES,
    DIRECTIONAL,
    ENTITIES,
    NEGATORS,
    NUMBER_WORDS,
    STOPWORDS,
    TASKS,
    UNITS,
    singular,
)

_TOKEN = re.compile(r"c\+\+|c#|f#|\d+(?:[.,]\d+)*|[^\W\d_]+(?:\d+[^\W\d_]*)*|[%$]", re.UNICODE)
_CONTRACTIONS = (
    (re.compile(r"\bcan[\u2019']t\b"), "can not"),
    (re.compile(r"\bwon[\u2019']t\b"), "will not"),
    (re.compile(r"n[\u2019']t\b"), " not"),
)
_CAPITALISED = re.compile(r"(?<![.!?]\s)(?<!^)\b([A-Z][a-zA-Z0-9+#]*)")
# Sentence-initial or quoted capitals, and the pronoun, are not names.
_NOT_NAMES = STOPWORDS | {"i"}


class Text(NamedTuple):
    """What the guards read of one question, made once per text."""

    words: tuple[str, ...]  # lower case, singular, in order
    content: tuple[str, ...]  # the words that are no stopword, in order
    numbers: frozenset[str]
    units: frozenset[str]
    negations: int
    names: frozenset[str]  # entities from the lexicon, and capitalised words mid-sentence
    tasks: frozenset[str]
    audiences: frozenset[str]


def read_text(text: str) -> Text:
    lowered = text.lower()
    for pattern, replacement in _CONTRACTIONS:
        lowered = pattern.sub(replacement, lowered)
    raw = _TOKEN.findall(lowered)
    words = tuple(_canonical(word) for word in raw)
    numbers = set()
    for word in raw:
        if word[0].isdigit():
            numbers.add(word.replace(",", ""))
        elif word in NUMBER_WORDS:
            numbers.add(NUMBER_WORDS[word])
    names = {ALIASES.get(w, w) for w in raw if w in ENTITIES}
    names.update(
        singular(m.lower())
        for m in _CAPITALISED.findall(text)
        if (m.lower() not in _NOT_NAMES and not m.isupper()) or (len(m) > 1 and m.isupper())
    )
    names.update(w for w in raw if any(c.isdigit() for c in w) and any(c.isalpha() for c in w))
    return Text(
        words=words,
        # a stopword as typed or as singular ("does" is not the singular of "doe")
        content=tuple(
            w
            for w, typed in zip(words, raw, strict=True)
            if w not in STOPWORDS and typed not in STOPWORDS
        ),
        numbers=frozenset(numbers),
        units=frozenset(UNITS[w] for w in raw if w in UNITS),
        negations=sum(w in NEGATORS for w in raw),
        names=frozenset(n for n in names if n not in _NOT_NAMES),
        tasks=frozenset(TASKS[w] for w in raw if w in TASKS),
        audiences=_audiences(words),
    )


def _audiences(words: tuple[str, ...]) -> frozenset[str]:
    """Who the answer is for: the lexicon's words ("quick" and "long" are no audience: "how
    long is the Nile"), and an age in years ("to a 6-year-old": a child)."""
    found = {AUDIENCES[w] for w in words if w in AUDIENCES}
    if ("year", "old") in set(itertools.pairwise(words)):
        found.add("simple")
    return frozenset(found)


def _canonical(word: str) -> str:
    """One spelling per word: aliases, units ("kilometres" = "km"), number words ("zero" = "0"),
    singulars."""
    word = ALIASES.get(word, word)
    return UNITS.get(word) or NUMBER_WORDS.get(word) or singular(word)


def disagreement(new: Text, stored: Text) -> str | None:
    """The first guard that rejects serving `stored`'s answer to `new`, or None."""
    if new.numbers != stored.numbers:
        return "number"
    if new.units != stored.units:
        return "unit"
    if new.negations % 2 != stored.negations % 2:
        return "negation"
    if _antonyms(new.words, stored.words):
        return "antonym"
    if _named_only_once(new, stored):
        return "entity"
    if _reversed(new.words, stored.words):
        return "direction"
    if new.tasks != stored.tasks:
        return "task"
    if new.audiences != stored.audiences:
        return "audience"
    return None


def _antonyms(a: tuple[str, ...], b: tuple[str, ...]) -> bool:
    only_a, only_b = set(a) - set(b), set(b) - set(a)
    return any(ANTONYMS.get(word, frozenset()) & only_b for word in only_a)


def _named_only_once(a: Text, b: Text) -> bool:
    """A name one question mentions and the other does not (in any case)."""
    words_a, words_b = set(a.words), set(b.words)
    return bool(a.names - words_b - b.names) or bool(b.names - words_a - a.names)


def _reversed(a: tuple[str, ...], b: tuple[str, ...]) -> bool:
    """Two words both questions hold, in opposite orders, with a directional word between
    them in either ("miles to km" / "km to miles", "zip then encrypt" / "encrypt then zip")."""
    first_a = _first_positions(a)
    first_b = _first_positions(b)
    shared = [w for w in first_a if w in first_b and w not in STOPWORDS and w not in DIRECTIONAL]
    for i, x in enumerate(shared):
        for y in shared[i + 1 :]:
            if (first_a[x] < first_a[y]) == (first_b[x] < first_b[y]):
                continue
            if _between(a, first_a[x], first_a[y]) or _between(b, first_b[x], first_b[y]):
                return True
    return False


def _first_positions(words: tuple[str, ...]) -> dict[str, int]:
    first: dict[str, int] = {}
    for i, word in enumerate(words):
        first.setdefault(word, i)
    return first


def _between(words: tuple[str, ...], i: int, j: int) -> bool:
    lo, hi = min(i, j), max(i, j)
    return any(word in DIRECTIONAL for word in words[lo + 1 : hi])


def signals(new: Text, stored: Text) -> dict[str, float]:
    """Every guard's finding on one pair, each in [0, 1], as the verifier
    (proxy/semantic/verifier.py) weighs them. One-sided findings (a number or a name only one
    text states) are kept apart from conflicts (both state one, and they differ): paraphrases
    often add or drop the first, hard negatives are made of the second."""
    set_new, set_stored = set(new.content), set(stored.content)
    only_new, only_stored = set_new - set_stored, set_stored - set_new
    union = set_new | set_stored
    overlap = len(set_new & set_stored) / len(union) if union else 1.0
    names_new = new.names - set(stored.words) - stored.names
    names_stored = stored.names - set(new.words) - new.names
    return {
        "number": float(bool(new.numbers and stored.numbers) and new.numbers != stored.numbers),
        "number_one_side": float(bool(new.numbers) != bool(stored.numbers)),
        "unit": float(bool(new.units and stored.units) and new.units != stored.units),
        "negation": float(new.negations % 2 != stored.negations % 2),
        "antonym": float(_antonyms(new.words, stored.words)),
        "entity": float(bool(names_new) and bool(names_stored)),
        "entity_one_side": float(bool(names_new) != bool(names_stored)),
        "direction": float(_reversed(new.words, stored.words)),
        "order": float(overlap >= 0.6 and _swapped(new.content, stored.content)),
        "task": float(new.tasks != stored.tasks),
        "audience": float(new.audiences != stored.audiences),
        # Lexical overlap of two texts that still differ: hard negatives are small edits of a
        # question, paraphrases reword it. The same words in the same order are no edit.
        "edit": overlap if new.content != stored.content else 0.0,
        "substitution": overlap * min(_substitutions(new.content, stored.content), 2) / 2,
        "unmatched": min(len(only_new) + len(only_stored), 6) / 6,
    }


def _swapped(a: tuple[str, ...], b: tuple[str, ...]) -> bool:
    """Two words both hold in opposite orders ("km in 10 miles" / "miles in 10 km")."""
    first_a, first_b = _first_positions(a), _first_positions(b)
    shared = [w for w in first_a if w in first_b]
    return any(
        (first_a[x] < first_a[y]) != (first_b[x] < first_b[y])
        for i, x in enumerate(shared)
        for y in shared[i + 1 :]
    )


def _substitutions(a: tuple[str, ...], b: tuple[str, ...]) -> int:
    """Words swapped one for one in place ("reverse a list" / "sort a list")."""
    matcher = SequenceMatcher(a=a, b=b, autojunk=False)
    return sum(
        min(i2 - i1, j2 - j1) for tag, i1, i2, j1, j2 in matcher.get_opcodes() if tag == "replace"
    )
