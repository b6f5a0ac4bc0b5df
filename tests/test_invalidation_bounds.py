"""The rule table is bounded (issue 19, item 11): anyone holding a tenant's key may name any user
and flip their persona, and each flip used to add a rule kept for the longest TTL. Now a user's
entries are flushed at most once per interval, the table (in memory and Redis's sorted set) holds
at most INVALIDATION_MAX_RULES rules, and a collapse never serves a stale entry and costs misses
to the tenant that made the rules, not to the others."""

from __future__ import annotations

import redis
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.cache.entry import EntryMeta
from proxy.invalidation.rules import Rule, RuleBook
from proxy.invalidation.selectors import Selector
from proxy.vocabulary import INVALIDATION_RULES_KEY
from tests.admin_support import TOKEN, TOKENS
from tests.fixtures.sidecar import API_KEY, OTHER_API_KEY, Sidecar, SidecarFactory
from tests.invalidation_support import chat_status, invalidate
from tests.test_invalidation_rules import matches, metas, selectors

BEGINNER = {"X-Persona-Experience": "beginner"}
EXPERT = {"X-Persona-Experience": "expert"}


def user(name: str) -> dict[str, str]:
    return {"X-Cache-Scope": "user", "X-User-Id": name}


def entry(generation: int, tenant: str = "t_a", user_id: str = "u1") -> EntryMeta:
    return EntryMeta(
        tenant=tenant, endpoint="chat.completions", model="gpt-4o-mini", scope="user",
        user_id=user_id, persona={}, generation=generation,
    )  # fmt: skip


def test_a_flood_of_one_tenants_rules_collapses_into_one_rule_for_that_tenant() -> None:
    book = RuleBook(max_rules=8)
    book.add(Rule(Selector(tenant="t_b", user_id="u1", scope="user"), 1, 1.0))
    for n in range(2, 40):
        book.add(Rule(Selector(tenant="t_a", user_id=f"u{n}", scope="user"), n, float(n)))
    assert len(book) <= 8
    assert book.is_stale(entry(38, user_id="u39"))  # what the rules covered still is
    assert book.is_stale(entry(5, user_id="someone-else"))  # and more, of t_a only
    assert not book.is_stale(entry(0, tenant="t_b", user_id="u2"))  # t_b keeps its precise rule
    assert book.is_stale(entry(0, tenant="t_b", user_id="u1"))


def test_many_tenants_with_one_rule_each_collapse_into_one_rule_for_everything() -> None:
    book = RuleBook(max_rules=4)
    for n in range(1, 6):
        book.add(Rule(Selector(tenant=f"t{n}"), n, float(n)))
    assert len(book) == 1
    assert all(book.is_stale(entry(4, tenant=f"t{n}")) for n in range(1, 9))
    assert not book.is_stale(entry(5, tenant="t1"))


@settings(max_examples=300, deadline=None)
@given(
    rules=st.lists(st.tuples(selectors | st.just(Selector(all=True)), st.integers(1, 9))),
    max_rules=st.integers(1, 5),
    entry=metas,
)
def test_a_bounded_book_never_misses_a_stale_entry(
    rules: list[tuple[Selector, int]], max_rules: int, entry: EntryMeta
) -> None:
    book = RuleBook(max_rules=max_rules)
    for selector, generation in rules:
        book.add(Rule(selector, generation, 0.0))
    assert len(book) <= max_rules
    if any(g > entry.generation and matches(s, entry) for s, g in rules):
        assert book.is_stale(entry)


def rules_held(sidecar: Sidecar, redis_url: str | None) -> int:
    if redis_url is None:
        return sidecar.runtime.invalidations.rules
    client = redis.Redis.from_url(redis_url)
    try:
        return int(client.zcard(INVALIDATION_RULES_KEY))
    finally:
        client.close()


def flood(url: str, users: int) -> None:
    """A tenant-key holder spoofing users: each one's entry met with another persona."""
    for n in range(users):
        assert chat_status(url, "Spoofed.", **user(f"victim-{n}"), **BEGINNER) == "MISS"
        assert chat_status(url, "Spoofed.", **user(f"victim-{n}"), **EXPERT) == "MISS"


def bystander(url: str) -> str:
    """A user-scoped request of another tenant."""
    return chat_status(url, "Mine.", api_key=OTHER_API_KEY, **user("bystander"), **BEGINNER)


def check_bounded_flood(make_sidecar: SidecarFactory, redis_url: str | None) -> None:
    env = {"INVALIDATION_MAX_RULES": "6"} | ({"REDIS_URL": redis_url} if redis_url else {})
    sidecar = make_sidecar(**env)
    url = sidecar.url
    assert bystander(url) == "MISS"
    assert chat_status(url, "Old.", **user("victim-0"), **BEGINNER) == "MISS"
    flood(url, 20)
    assert sidecar.runtime.invalidations.rules <= 6
    assert rules_held(sidecar, redis_url) <= 6
    # Never stale: the flooded tenant's older user entries are refused ...
    assert chat_status(url, "Old.", **user("victim-0"), **BEGINNER) == "MISS"
    # ... and the other tenant's entries are untouched.
    assert bystander(url) == "HIT"
    if redis_url:  # a replica that starts now reads the collapsed rules: still never stale
        fresh = make_sidecar(**env)
        assert fresh.runtime.invalidations.rules <= 6
        assert chat_status(fresh.url, "Spoofed.", **user("victim-3"), **BEGINNER) == "MISS"
        assert bystander(fresh.url) == "HIT"


def test_a_spoofed_flood_keeps_the_memory_table_bounded(make_sidecar: SidecarFactory) -> None:
    check_bounded_flood(make_sidecar, None)


def test_a_spoofed_flood_keeps_the_redis_table_bounded(
    make_sidecar: SidecarFactory, redis_url: str
) -> None:
    check_bounded_flood(make_sidecar, redis_url)


def test_repeated_persona_flips_add_one_rule_and_are_never_served(
    make_sidecar: SidecarFactory, redis_url: str
) -> None:
    for sidecar in (make_sidecar(), make_sidecar(REDIS_URL=redis_url)):
        url = sidecar.url
        assert chat_status(url, "Flip.", **user("flipper"), **BEGINNER) == "MISS"
        for persona in (EXPERT, BEGINNER, EXPERT, BEGINNER):
            assert chat_status(url, "Flip.", **user("flipper"), **persona) == "MISS"
        assert chat_status(url, "Flip.", **user("flipper"), **BEGINNER) == "HIT"
        assert sidecar.runtime.invalidations.rules == 1
        assert chat_status(url, "Flip.", api_key=API_KEY, **user("flipper"), **EXPERT) == "MISS"


def test_a_replica_that_starts_later_learns_every_selector_of_one_invalidation(
    make_sidecar: SidecarFactory, redis_url: str
) -> None:
    """One invalidation stores a member per selector under one generation; a reload used to keep
    only the first of them (the generation counted as known after it), serving the rest stale."""
    first = make_sidecar(ADMIN_TOKENS=TOKENS, REDIS_URL=redis_url)
    for model in ("gpt-4o-mini", "gpt-4o"):
        assert chat_status(first.url, "Both models.", model=model) == "MISS"
    invalidate(first.admin_url, TOKEN, {"model": "gpt-4o-mini"}, {"model": "gpt-4o"})
    later = make_sidecar(ADMIN_TOKENS=TOKENS, REDIS_URL=redis_url)
    assert later.runtime.invalidations.rules == 2
    for model in ("gpt-4o-mini", "gpt-4o"):
        assert chat_status(later.url, "Both models.", model=model) == "MISS"


def test_redis_collapses_many_tenants_rules_into_one_rule_for_everything(
    make_sidecar: SidecarFactory, redis_url: str
) -> None:
    env = {"ADMIN_TOKENS": TOKENS, "REDIS_URL": redis_url, "INVALIDATION_MAX_RULES": "4"}
    first = make_sidecar(**env)
    assert chat_status(first.url, "Older than all.") == "MISS"
    generations = [
        invalidate(first.admin_url, TOKEN, {"tenant": f"t_other{n}"})["generation"]
        for n in range(5)
    ]
    client = redis.Redis.from_url(redis_url)
    try:
        held = client.zrange(INVALIDATION_RULES_KEY, 0, -1)
    finally:
        client.close()
    assert held == [f'{generations[-1]} {{"all":true}}'.encode()]
    later = make_sidecar(**env)  # reads the one broad rule: the older entry is refused
    assert later.runtime.invalidations.rules == 1
    assert chat_status(later.url, "Older than all.") == "MISS"
    assert chat_status(later.url, "Older than all.") == "HIT"
