"""The guards and the verifier on concrete pairs (proxy/semantic/guards.py, verifier.py, match.py).

Similarities are MiniLM's for each pair, as measured on tests/data/semantic_pairs.jsonl, so these
run without the model."""

from __future__ import annotations

import pytest

from proxy.semantic.guards import disagreement, read_text, signals
from proxy.semantic.match import Candidate, pick
from proxy.semantic.verifier import verdict

# (stored, new, MiniLM similarity): another question, however similar.
REJECTED = [
    ("How many kilometers are in 10 miles?", "How many miles are in 10 kilometers?", 0.997),
    ("How do I convert US dollars to euros?", "How do I convert euros to US dollars?", 0.991),
    (
        "What are the advantages of UDP over TCP?",
        "What are the disadvantages of UDP compared to TCP?",
        0.937,
    ),
    (
        "Why does your heart rate increase during exercise?",
        "Why does your heart rate decrease after exercise?",
        0.934,
    ),
    ("What is the pH of a 0.01 M HCl solution?", "What is the pH of a 0.001 M HCl solution?", 0.98),
    (
        "What is the monthly payment on a $200,000 mortgage at 5% over 30 years?",
        "What is the monthly payment on a $200,000 mortgage at 5% over 15 years?",
        0.946,
    ),
    (
        "What were the main causes of World War I?",
        "What were the main causes of World War II?",
        0.896,
    ),
    ("How do I reverse a list in Python?", "How do I reverse a list in JavaScript?", 0.95),
    (
        "Is it safe to use public Wi-Fi without a VPN?",
        "Is it safe to use public Wi-Fi with a VPN?",
        0.946,
    ),
    (
        "What is the difference between mitosis and meiosis?",
        "Explain the difference between mitosis and meiosis in one sentence.",
        0.907,
    ),
    (
        "What is the difference between git merge and git rebase?",
        "Explain git merge vs git rebase to a total beginner using a simple everyday analogy.",
        0.858,
    ),
    (
        "How do I write a strong thesis statement for an argumentative essay?",
        "Can you give me an example of a strong thesis statement for an argumentative essay?",
        0.921,
    ),
]

# (stored, new, MiniLM similarity): the same question in other words.
ACCEPTED = [
    (
        "What is the difference between mitosis and meiosis?",
        "How does meiosis differ from mitosis?",
        0.956,
    ),
    (
        "How does photosynthesis work in plants?",
        "Can you explain how photosynthesis works in plants?",
        0.968,
    ),
    (
        "How many hours a day should I study for the SAT if the test is in 2 months?",
        "I have two months until the SAT. How many hours per day should I be studying?",
        0.911,
    ),
    (
        "What is the largest organ in the human body?",
        "which organ in the body is the biggest",
        0.914,
    ),
    (
        "What is the time complexity of binary search?",
        "whats the time complexity of binary search",
        0.97,
    ),
    (
        "Why does salt make water boil at a higher temperature?",
        "How does adding salt raise the boiling point of water?",
        0.857,
    ),
]


@pytest.mark.parametrize(("stored", "new", "similarity"), REJECTED)
def test_another_question_is_rejected(stored: str, new: str, similarity: float) -> None:
    assert verdict(read_text(new), read_text(stored), similarity) is not None


@pytest.mark.parametrize(("stored", "new", "similarity"), ACCEPTED)
def test_a_paraphrase_is_accepted(stored: str, new: str, similarity: float) -> None:
    assert verdict(read_text(new), read_text(stored), similarity) is None


def test_the_same_question_is_accepted_even_in_other_case_and_spacing() -> None:
    stored = read_text("How do I reverse a list in Python?")
    assert verdict(read_text("how do i reverse a list in python"), stored, 0.99) is None


def test_a_low_similarity_is_rejected_by_the_verifier_too() -> None:
    stored = read_text("What is the largest organ in the human body?")
    assert verdict(read_text("which organ in the body is the biggest"), stored, 0.5) == "similarity"


@pytest.mark.parametrize(
    ("a", "b", "signal"),
    [
        ("a 30-year mortgage at 4%", "a 15-year mortgage at 6%", "number"),
        ("convert 5 km to inches", "convert 5 miles to inches", "unit"),
        ("is coffee good for you", "is coffee not good for you", "negation"),
        ("what are the advantages of tcp", "what are the disadvantages of tcp", "antonym"),
        ("how do I learn Python", "how do I learn Java", "entity"),
        ("convert miles to inches", "convert inches to miles", "direction"),
        ("how many miles are in 10 km", "how many km are in 10 miles", "order"),
        ("define a prime number", "prove there are infinitely many primes", "task"),
        ("explain gravity", "explain gravity to a child", "audience"),
        ("how do I reverse a list", "how do I sort a list", "substitution"),
    ],
)
def test_each_signal_names_its_class(a: str, b: str, signal: str) -> None:
    assert signals(read_text(a), read_text(b))[signal] > 0
    assert signals(read_text(a), read_text(a))[signal] == 0


def test_number_words_agree_with_digits_and_ambiguous_ones_are_no_numbers() -> None:
    assert read_text("ten apples").numbers == read_text("10 apples").numbers
    assert not read_text("Newton's second law, the first one").numbers


def test_disagreement_names_the_first_guard() -> None:
    assert (
        disagreement(read_text("turn dark mode on"), read_text("turn dark mode off")) == "antonym"
    )
    assert disagreement(read_text("reverse a list"), read_text("reverse a list")) is None


def test_pick_skips_a_rejected_candidate_for_the_next_one_and_reports_why() -> None:
    reasons: list[str] = []
    candidates = [
        Candidate("neg", 0.96, "What are the disadvantages of UDP compared to TCP?"),
        Candidate("own", 0.954, "So what are the advantages of UDP over TCP exactly?"),
    ]
    question = read_text("What are the advantages of UDP over TCP?")
    chosen = pick(question, candidates, 0.8, reasons.append)
    assert chosen is not None and chosen.digest == "own"
    assert reasons == ["antonym"]
    assert pick(question, candidates, 0.97, reasons.append) is None
