"""Log probabilities the fake answers when asked (`logprobs`), a pure function of the request.

Each stream piece of a reply (see content.word_deltas) is one token; its alternatives are other
words of the vocabulary, less likely than the token itself.
"""

from __future__ import annotations

import hashlib
from typing import Any

from .content import word_deltas

_ALTERNATIVES = ("the", "a", "answer", "lesson", "step", "idea", "result", "note", "plan", "goal")


def _logprob(seed: bytes, label: str) -> float:
    digest = hashlib.sha256(seed + label.encode()).digest()
    return -round(int.from_bytes(digest[:4], "little") / 2**32 * 2.5, 6)


def _top(
    seed: bytes, label: str, token: str, logprob: float, count: int
) -> list[tuple[str, float]]:
    """(token, logprob) pairs, most likely first: the chosen token, then alternatives."""
    pairs = [(token, logprob)] if count > 0 else []
    for rank in range(1, count):
        word = _ALTERNATIVES[rank % len(_ALTERNATIVES)]
        alternative = (" " + word) if token.startswith(" ") else word.capitalize()
        if alternative == token:
            alternative += "s"
        pairs.append((alternative, round(logprob - rank + _logprob(seed, f"{label}/{rank}"), 6)))
    return pairs


def _entry(token: str, logprob: float) -> dict[str, Any]:
    return {"token": token, "logprob": logprob, "bytes": list(token.encode())}


def chat_logprobs(seed: bytes, choice: int, words: list[str], top: int) -> list[dict[str, Any]]:
    """`logprobs.content` of a chat choice: one entry per stream piece."""
    entries = []
    for index, token in enumerate(word_deltas(words)):
        label = f"{choice}:{index}"
        logprob = _logprob(seed, label)
        entry = _entry(token, logprob)
        entry["top_logprobs"] = [_entry(t, lp) for t, lp in _top(seed, label, token, logprob, top)]
        entries.append(entry)
    return entries


def text_logprobs(seed: bytes, choice: int, words: list[str], top: int) -> list[dict[str, Any]]:
    """Per-piece legacy completions logprobs: {tokens, token_logprobs, top_logprobs,
    text_offset}, one dict per stream piece (joined for a whole answer by `join_text`)."""
    out = []
    offset = 0
    for index, token in enumerate(word_deltas(words)):
        label = f"{choice}:{index}"
        logprob = _logprob(seed, label)
        out.append(
            {
                "tokens": [token],
                "token_logprobs": [logprob],
                "top_logprobs": [dict(_top(seed, label, token, logprob, top))],
                "text_offset": [offset],
            }
        )
        offset += len(token)
    return out


def join_text(pieces: list[dict[str, Any]]) -> dict[str, Any]:
    fields = ("tokens", "token_logprobs", "top_logprobs", "text_offset")
    return {field: [v for piece in pieces for v in piece[field]] for field in fields}
