"""Invalidation selectors and the rule book (issue 5, item 3), without servers: which entries a
selector covers, how a selector is checked, and that the indexed check the hit path runs agrees
with the plain definition for any rules and entries."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.cache.entry import EntryMeta
from proxy.errors import http_status
from proxy.failures import InvalidRequest
from proxy.invalidation.rules import Rule, RuleBook
from proxy.invalidation.selectors import Selector, canonical, project
from proxy.persona import PersonaParser
from proxy.settings import PersonaSettings

PERSONAS = PersonaParser(PersonaSettings())


def meta(generation: int = 0, **fields: object) -> EntryMeta:
    base: dict[str, object] = {
        "tenant": "t_a", "endpoint": "chat.completions", "model": "gpt-4o-mini",
        "scope": "persona", "user_id": "u1", "persona": {"tone": "formal"},
    }  # fmt: skip
    return EntryMeta(**{**base, **fields}, generation=generation)  # type: ignore[arg-type]


def matches(selector: Selector, entry: EntryMeta) -> bool:
    """The definition: every field the selector sets equals the entry's."""
    if selector.all:
        return True
    plain = [("tenant", entry.tenant), ("user_id", entry.user_id), ("model", entry.model),
             ("endpoint", entry.endpoint), ("scope", entry.scope)]  # fmt: skip
    for name, value in plain:
        wanted = getattr(selector, name)
        if wanted is not None and wanted != value:
            return False
    return all(entry.persona.get(dim) == v for dim, v in (selector.persona or {}).items())


def test_a_rule_covers_older_matching_entries_only() -> None:
    book = RuleBook()
    book.add(Rule(Selector(persona={"tone": "formal"}, model="gpt-4o-mini"), 5, 0.0))
    assert book.is_stale(meta(4))
    assert not book.is_stale(meta(5))  # made once generation 5 was known: not covered
    assert not book.is_stale(meta(4, model="gpt-4o"))
    assert not book.is_stale(meta(4, persona={"tone": "friendly"}))
    assert not book.is_stale(meta(4, persona={}))  # not keyed by tone: never matched on it


def test_all_covers_everything_older() -> None:
    book = RuleBook()
    book.add(Rule(Selector(all=True), 2, 0.0))
    assert book.is_stale(meta(1, tenant="t_b", user_id=None, persona={}))
    assert not book.is_stale(meta(2))


def test_pruning_forgets_old_rules_but_not_the_newest_generation() -> None:
    book = RuleBook()
    book.add(Rule(Selector(user_id="u1"), 1, at=100.0))
    book.add(Rule(Selector(user_id="u2"), 2, at=200.0))
    book.prune(older_than=150.0)
    assert len(book) == 1
    assert book.generations() == {2}
    assert not book.is_stale(meta(0, user_id="u1"))  # its rule is older than any live entry
    assert book.is_stale(meta(1, user_id="u2"))


selectors = st.builds(
    Selector,
    tenant=st.none() | st.sampled_from(["t_a", "t_b"]),
    user_id=st.none() | st.sampled_from(["u1", "u2"]),
    persona=st.none() | st.dictionaries(st.sampled_from(["tone", "density"]),
                                        st.sampled_from(["formal", "concise"]), min_size=1),
    model=st.none() | st.sampled_from(["gpt-4o-mini", "gpt-4o"]),
    endpoint=st.none() | st.sampled_from(["chat.completions", "embeddings"]),
    scope=st.none() | st.sampled_from(["persona", "user"]),
)  # fmt: skip
metas = st.builds(
    meta,
    generation=st.integers(0, 6),
    tenant=st.sampled_from(["t_a", "t_b"]),
    user_id=st.none() | st.sampled_from(["u1", "u2"]),
    persona=st.dictionaries(st.sampled_from(["tone", "density"]),
                            st.sampled_from(["formal", "concise"])),
    model=st.sampled_from(["gpt-4o-mini", "gpt-4o"]),
    endpoint=st.sampled_from(["chat.completions", "embeddings"]),
    scope=st.sampled_from(["persona", "user", "tenant"]),
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(rules=st.lists(st.tuples(selectors | st.just(Selector(all=True)), st.integers(1, 6))),
       entry=metas)  # fmt: skip
def test_the_indexed_check_agrees_with_the_definition(
    rules: list[tuple[Selector, int]], entry: EntryMeta
) -> None:
    book = RuleBook()
    for selector, generation in rules:
        book.add(Rule(selector, generation, 0.0))
    expected = any(g > entry.generation and matches(s, entry) for s, g in rules)
    assert book.is_stale(entry) is expected


def test_project_reads_each_field() -> None:
    shape, values = Selector(persona={"tone": "formal"}, user_id="u1", scope="persona").fields()
    assert shape == ("persona.tone", "scope", "user_id")
    assert project(meta(), shape) == values
    assert project(meta(user_id=None), shape) is None


def test_canonical_form_matches_what_entries_record() -> None:
    given_ = Selector(persona={"interests": " Math,art ,math", "tone": "Formal"},
                      endpoint="/v1/chat/completions")  # fmt: skip
    checked = canonical(given_, PERSONAS, "selectors[0]")
    assert checked.persona == {"tone": "formal", "interests": "art,math"}
    assert checked.endpoint == "chat.completions"


@pytest.mark.parametrize(
    ("selector", "param"),
    [
        (Selector(), "selectors[0]"),
        (Selector(persona={}), "selectors[0]"),
        (Selector(all=True, model="gpt-4o"), "selectors[0]"),
        (Selector(persona={"mood": "happy"}), "selectors[0].persona"),
        (Selector(persona={"tone": "sarcastic"}), "selectors[0].persona.tone"),
        (Selector(persona={"tone": " "}), "selectors[0].persona.tone"),
        (Selector(endpoint="images"), "selectors[0].endpoint"),
        (Selector(user_id=" "), "selectors[0].user_id"),
    ],
)
def test_a_bad_selector_is_a_400_naming_the_field(selector: Selector, param: str) -> None:
    with pytest.raises(InvalidRequest) as raised:
        canonical(selector, PERSONAS, "selectors[0]")
    assert (http_status(raised.value), raised.value.param) == (400, param)
