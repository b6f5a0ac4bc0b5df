"""Cache keys as properties (hypothesis), and unit tests of what feeds them: the persona parser,
the request's cache directives, and the TTL policy (docs/design.md §3)."""

from __future__ import annotations

import json
import random
import re
import string
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict

from proxy.directives import DEFAULT_DIRECTIVES, Directives, Scope, parse_directives
from proxy.errors import http_status
from proxy.failures import InvalidRequest
from proxy.keys import CacheKey, KeyMaker
from proxy.persona import HEADER_BY_DIMENSION, NO_PERSONA, Persona, PersonaParser, parse_user_id
from proxy.settings import PERSONA_DIMENSIONS, CacheSettings, PersonaSettings, Settings, TtlSettings
from proxy.ttl import Kind, TtlPolicy, chat_kind

PROPERTY = settings(
    max_examples=200,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
KEYS = KeyMaker(b"test-secret", CacheSettings())
ENDPOINT = "chat.completions"
ALL_DIMS = tuple(PERSONA_DIMENSIONS)
# docs/design.md §3's list, spelled out here so the test does not trust the code under test.
NON_SEMANTIC = frozenset(
    {
        "stream",
        "stream_options",
        "user",
        "safety_identifier",
        "prompt_cache_key",
        "metadata",
        "store",
    }
)
# Top-level values that mean "absent" (tests/test_canonical.py tests those rules): the bodies
# here hold none of them, so any change they make is a change of meaning.
MEANS_ABSENT = {"n": 1, "logprobs": False, "echo": False, "presence_penalty": 0}
MEANS_ABSENT |= {"frequency_penalty": 0}
ENTRY_KEY = re.compile(r"^sc:e:\{[0-9a-f]{64}\}$")

# JSON-like values: what a decoded request body can hold.
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
API_FIELDS = ["model", "messages", "temperature", "seed", "max_tokens", "tools", "n", "top_p"]
semantic_names = st.one_of(st.sampled_from(API_FIELDS), st.text(min_size=1, max_size=12)).filter(
    lambda k: k not in NON_SEMANTIC
)


def means_absent(name: str, value: Any) -> bool:
    """A top-level null, or a value docs/design.md §3 reads as the field being absent."""
    absent = MEANS_ABSENT.get(name, ...)
    return value is None or (type(value) is type(absent) and value == absent)


bodies = st.dictionaries(semantic_names, json_values, min_size=1, max_size=6).filter(
    lambda body: not any(means_absent(k, v) for k, v in body.items())
)
experiences = st.sampled_from(["beginner", "intermediate", "advanced", "expert"])
styles = st.sampled_from(["visual", "auditory", "reading", "kinesthetic"])
tones = st.sampled_from(["formal", "friendly", "encouraging", "direct"])
densities = st.sampled_from(["concise", "balanced", "detailed"])
interest_sets = st.lists(
    st.text(string.ascii_lowercase, min_size=1, max_size=8), max_size=4, unique=True
).map(lambda tags: tuple(sorted(tags)))
personas = st.builds(
    Persona,
    experience=st.none() | experiences,
    learning_style=st.none() | styles,
    tone=st.none() | tones,
    density=st.none() | densities,
    interests=interest_sets,
)


def key_of(
    body: dict[str, Any],
    *,
    tenant: str = "t_tenant",
    persona: Persona = NO_PERSONA,
    directives: Directives = DEFAULT_DIRECTIVES,
    user_id: str | None = None,
    keys: KeyMaker = KEYS,
) -> CacheKey:
    scope = keys.scope_part(directives, persona, user_id, ALL_DIMS)
    return keys.request_key(tenant, ENDPOINT, body, scope)


def shuffled(value: Any, rng: random.Random) -> Any:
    """The same JSON value with every object's keys in another order."""
    if isinstance(value, dict):
        items = list(value.items())
        rng.shuffle(items)
        return {k: shuffled(v, rng) for k, v in items}
    if isinstance(value, list):
        return [shuffled(v, rng) for v in value]
    return value


@PROPERTY
@given(
    body=bodies,
    rng=st.randoms(use_true_random=False),
    indent=st.none() | st.integers(0, 4),
    ascii_only=st.booleans(),
)
def test_key_order_and_whitespace_never_change_a_key(
    body: dict[str, Any], rng: random.Random, indent: int | None, ascii_only: bool
) -> None:
    compact = json.dumps(body, separators=(",", ":")).encode()
    loose = json.dumps(shuffled(body, rng), indent=indent, ensure_ascii=ascii_only).encode()
    assert key_of(msgspec.json.decode(compact)) == key_of(msgspec.json.decode(loose))


@PROPERTY
@given(body=bodies, data=st.data())
def test_changing_a_semantic_field_always_changes_the_key(
    body: dict[str, Any], data: st.DataObject
) -> None:
    name = data.draw(st.sampled_from(sorted(body)))
    new = data.draw(json_values)
    same = msgspec.json.encode(new, order="deterministic") == msgspec.json.encode(
        body[name], order="deterministic"
    )
    assume(not same and not means_absent(name, new))
    assert key_of(body) != key_of({**body, name: new})
    # A new field counts too: an unknown API field never causes a false hit.
    extra = data.draw(semantic_names.filter(lambda k: k not in body))
    assume(not means_absent(extra, new))
    assert key_of(body) != key_of({**body, extra: new})


@PROPERTY
@given(body=bodies, name=st.sampled_from(sorted(NON_SEMANTIC)), value=json_values)
def test_non_semantic_fields_never_change_the_key(
    body: dict[str, Any], name: str, value: Any
) -> None:
    assert key_of(body) == key_of({**body, name: value})


@PROPERTY
@given(body=bodies, tenants=st.lists(st.text(min_size=1), min_size=2, max_size=2, unique=True))
def test_another_tenant_always_changes_the_key(body: dict[str, Any], tenants: list[str]) -> None:
    assert key_of(body, tenant=tenants[0]) != key_of(body, tenant=tenants[1])


@PROPERTY
@given(body=bodies, a=personas, b=personas)
def test_persona_scope_separates_personas(body: dict[str, Any], a: Persona, b: Persona) -> None:
    if a == b:
        assert key_of(body, persona=a) == key_of(body, persona=b)
    else:
        assert key_of(body, persona=a) != key_of(body, persona=b)


@PROPERTY
@given(body=bodies, a=personas, b=personas, users=st.lists(st.text(min_size=1), min_size=2))
def test_tenant_scope_ignores_persona_and_user(
    body: dict[str, Any], a: Persona, b: Persona, users: list[str]
) -> None:
    tenant_scope = Directives(scope=Scope.TENANT)
    first = key_of(body, persona=a, user_id=users[0], directives=tenant_scope)
    assert first == key_of(body, persona=b, user_id=users[1], directives=tenant_scope)


@PROPERTY
@given(
    body=bodies,
    persona=personas,
    users=st.lists(st.text(min_size=1, max_size=20), min_size=2, max_size=2, unique=True),
)
def test_user_scope_separates_users(
    body: dict[str, Any], persona: Persona, users: list[str]
) -> None:
    user_scope = Directives(scope=Scope.USER)
    mine = key_of(body, persona=persona, user_id=users[0], directives=user_scope)
    assert mine != key_of(body, persona=persona, user_id=users[1], directives=user_scope)
    # The default (persona) scope shares it between the two users.
    shared = key_of(body, persona=persona, user_id=users[0])
    assert shared == key_of(body, persona=persona, user_id=users[1])
    assert mine != shared


@PROPERTY
@given(body=bodies, a=personas, b=personas)
def test_narrowed_dims_share_across_the_other_dims(
    body: dict[str, Any], a: Persona, b: Persona
) -> None:
    narrowed = parse_directives(CIMultiDict({"X-Cache-Persona-Dims": "density, experience"}))
    same_where_it_matters = (a.experience, a.density) == (b.experience, b.density)
    narrowed_equal = key_of(body, persona=a, directives=narrowed) == key_of(
        body, persona=b, directives=narrowed
    )
    assert narrowed_equal == same_where_it_matters
    # `none`: one entry for every persona of the tenant.
    nothing = parse_directives(CIMultiDict({"X-Cache-Persona-Dims": "none"}))
    assert key_of(body, persona=a, directives=nothing) == key_of(
        body, persona=b, directives=nothing
    )


def test_persona_dims_from_config_by_endpoint_and_model() -> None:
    cache = CacheSettings(
        persona_dims_by={"completions": ["tone"], "gpt-4o-mini": ["experience", "density"]}
    )
    keys = KeyMaker(b"s", cache)
    assert keys.persona_dims("chat.completions", "gpt-4o") == ALL_DIMS
    assert keys.persona_dims("completions", "davinci") == ("tone",)
    assert keys.persona_dims("completions", "gpt-4o-mini") == ("experience", "density")


# Prompts that could not sit inside a 64-character hex digest by chance: any text with a
# character outside 0-9a-f, or hex-only text long enough that a chance match never happens.
prompts = st.one_of(
    st.text(min_size=4).filter(lambda p: not set(p) <= set(string.hexdigits.lower())),
    st.text("0123456789abcdef", min_size=16, max_size=40),
)


@PROPERTY
@given(body=bodies, prompt=prompts, persona=personas)
def test_keys_are_fixed_length_and_hold_no_prompt_text(
    body: dict[str, Any], prompt: str, persona: Persona
) -> None:
    messages = [{"role": "user", "content": prompt}]
    key = key_of({**body, "messages": messages}, persona=persona)
    assert ENTRY_KEY.match(key.entry)
    assert len(key.entry) == len("sc:e:{}") + 64
    assert len(key.digest) == 64
    assert key.short_id == key.digest[:16]
    assert key.lock == f"sc:l:{{{key.digest}}}"  # same hash tag: one cluster slot
    assert prompt not in key.digest


@PROPERTY
@given(
    credentials=st.lists(
        st.text(string.ascii_letters + string.digits + "-_", min_size=8, max_size=60),
        min_size=2,
        max_size=2,
        unique=True,
    )
)
def test_tenant_ids_differ_per_credential_and_hide_it(credentials: list[str]) -> None:
    first, second = (KEYS.tenant_id(f"Bearer sk-{c}") for c in credentials)
    assert first != second
    for tenant, credential in zip((first, second), credentials, strict=True):
        assert re.fullmatch(r"t_[0-9a-f]{20}", tenant)
        assert credential not in tenant
    # Keyed: another secret gives other tenant ids for the same credential.
    assert KeyMaker(b"another secret", CacheSettings()).tenant_id(
        f"Bearer sk-{credentials[0]}"
    ) != (first)


# --- TTL policy ---------------------------------------------------------------------------


def policy(**ttl: Any) -> TtlPolicy:
    return TtlPolicy(Settings(ttl=TtlSettings(**ttl)))


def test_ttl_base_per_kind() -> None:
    ttl = policy()
    assert ttl.seconds(Kind.CHAT_SAMPLED, 0.0) == 300  # CACHE_DEFAULT_TTL
    assert ttl.seconds(Kind.CHAT_DETERMINISTIC, 0.0) == 3600
    assert ttl.seconds(Kind.MODERATIONS, 0.0) == 86400
    assert ttl.seconds(Kind.EMBEDDINGS, 0.0) == 7 * 86400
    custom = TtlPolicy(Settings(cache=CacheSettings(default_ttl=60)))
    assert custom.seconds(Kind.CHAT_SAMPLED, 0.0) == 60


def test_chat_kind() -> None:
    assert chat_kind(0, None) is Kind.CHAT_DETERMINISTIC
    assert chat_kind(0.0, None) is Kind.CHAT_DETERMINISTIC
    assert chat_kind(0.7, 42) is Kind.CHAT_DETERMINISTIC
    assert chat_kind(None, 0) is Kind.CHAT_DETERMINISTIC
    assert chat_kind(0.7, None) is Kind.CHAT_SAMPLED
    assert chat_kind(None, None) is Kind.CHAT_SAMPLED


def test_personalisation_shortens() -> None:
    ttl = policy()
    scores = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    for kind in Kind:
        lives = [ttl.seconds(kind, s) for s in scores]
        assert lives == sorted(lives, reverse=True)
        assert len(set(lives)) == len(lives)
    assert ttl.seconds(Kind.CHAT_SAMPLED, 1.0) == 150  # cut 0.5 at full personalisation
    assert policy(personalisation_cut=0).seconds(Kind.CHAT_SAMPLED, 1.0) == 300


def test_clamp_and_max_age() -> None:
    ttl = policy(min=100, max=1000)
    assert ttl.seconds(Kind.EMBEDDINGS, 0.0) == 1000
    assert (
        TtlPolicy(
            Settings(cache=CacheSettings(default_ttl=20), ttl=TtlSettings(min=100, max=1000))
        ).seconds(Kind.CHAT_SAMPLED, 1.0)
        == 100
    )
    # max-age wins within the clamp, whatever the kind and personalisation.
    assert ttl.seconds(Kind.CHAT_SAMPLED, 1.0, max_age=500) == 500
    assert ttl.seconds(Kind.EMBEDDINGS, 0.0, max_age=500) == 500
    assert ttl.seconds(Kind.CHAT_SAMPLED, 0.0, max_age=5) == 100
    assert ttl.seconds(Kind.CHAT_SAMPLED, 0.0, max_age=0) == 100
    assert ttl.seconds(Kind.CHAT_SAMPLED, 0.0, max_age=10**9) == 1000


# --- persona headers ----------------------------------------------------------------------

PARSER = PersonaParser(PersonaSettings())
ALLOWED = {
    "experience": ["beginner", "intermediate", "advanced", "expert"],
    "learning_style": ["visual", "auditory", "reading", "kinesthetic"],
    "tone": ["formal", "friendly", "encouraging", "direct"],
    "density": ["concise", "balanced", "detailed"],
}


def parse(**headers: str) -> Persona:
    return PARSER.parse(CIMultiDict({k.replace("_", "-"): v for k, v in headers.items()}))


def test_no_persona_headers() -> None:
    assert PARSER.parse(CIMultiDict({"Authorization": "Bearer x"})) is NO_PERSONA
    assert NO_PERSONA.score == 0.0
    assert NO_PERSONA.as_dict() == {}


def test_full_persona_is_canonical() -> None:
    persona = parse(
        X_Persona_Experience=" Beginner ",
        X_Persona_Learning_Style="VISUAL",
        X_Persona_Tone="friendly",
        X_Persona_Density="Concise",
        X_Persona_Interests=" Math, physics ,MATH,, Art ",
    )
    assert persona == Persona(
        "beginner", "visual", "friendly", "concise", ("art", "math", "physics")
    )
    assert persona.score == 1.0
    assert persona.as_dict()["interests"] == "art,math,physics"
    assert parse(x_persona_tone="direct", X_Persona_Density="detailed").score == pytest.approx(0.4)
    # Blank headers count as unset.
    assert parse(X_Persona_Tone="  ", X_Persona_Interests=" , ").score == 0.0


@PROPERTY
@given(tags=st.lists(st.text(string.ascii_lowercase + string.digits, min_size=1, max_size=10)))
def test_interests_canonical_form(tags: list[str]) -> None:
    distinct = sorted(set(tags))
    assume(len(distinct) <= 10)
    messy = ",".join(f"  {t.upper()} " for t in reversed(tags))
    assert PARSER.parse_interests(messy) == tuple(distinct)


def test_more_than_ten_interests_is_a_400() -> None:
    ten = ",".join(f"tag{i}" for i in range(10))
    assert len(PARSER.parse_interests(ten + ",TAG0, tag1 ")) == 10  # duplicates do not count
    with pytest.raises(InvalidRequest) as caught:
        PARSER.parse_interests(ten + ",tag10")
    assert http_status(caught.value) == 400
    assert caught.value.param == "X-Persona-Interests"
    assert "10" in caught.value.message


@pytest.mark.parametrize("bad", ["a;b", "x" * 41, "-lead", "emoji🙂"])
def test_malformed_interest_is_a_400(bad: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        PARSER.parse_interests(f"math,{bad}")
    assert http_status(caught.value) == 400
    assert caught.value.param == "X-Persona-Interests"


@pytest.mark.parametrize("dimension", sorted(ALLOWED))
def test_invalid_persona_value_names_header_and_allowed_values(dimension: str) -> None:
    header = HEADER_BY_DIMENSION[dimension]
    with pytest.raises(InvalidRequest) as caught:
        PARSER.parse(CIMultiDict({header: "wizard"}))
    error = caught.value
    assert (http_status(error), error.param, error.code) == (400, header, "invalid_value")
    assert header in error.message
    assert "wizard" in error.message
    for value in ALLOWED[dimension]:
        assert value in error.message


def test_allowed_values_come_from_settings() -> None:
    parser = PersonaParser(PersonaSettings(tone=["calm", "brisk"]))
    assert parser.parse(CIMultiDict({"X-Persona-Tone": "Calm"})).tone == "calm"
    with pytest.raises(InvalidRequest) as caught:
        parser.parse(CIMultiDict({"X-Persona-Tone": "formal"}))
    assert "calm, brisk" in caught.value.message


def test_user_id_from_header_or_body() -> None:
    assert parse_user_id(CIMultiDict({"X-User-Id": " u-42 "}), "body-user") == "u-42"
    assert parse_user_id(CIMultiDict(), "body-user") == "body-user"
    assert parse_user_id(CIMultiDict(), None) is None
    assert parse_user_id(CIMultiDict(), "") is None
    for bad_header in ("two words", "", "x" * 129):
        with pytest.raises(InvalidRequest) as caught:
            parse_user_id(CIMultiDict({"X-User-Id": bad_header}), None)
        assert (http_status(caught.value), caught.value.param) == (400, "X-User-Id")
    for bad_body in (42, "y" * 513):
        with pytest.raises(InvalidRequest) as caught:
            parse_user_id(CIMultiDict(), bad_body)
        assert (http_status(caught.value), caught.value.param) == (400, "user")


# --- cache directives ---------------------------------------------------------------------


def directives(**headers: str) -> Directives:
    return parse_directives(CIMultiDict({k.replace("_", "-"): v for k, v in headers.items()}))


def test_no_directives() -> None:
    assert parse_directives(CIMultiDict({"Accept": "*/*"})) is DEFAULT_DIRECTIVES
    assert (DEFAULT_DIRECTIVES.read, DEFAULT_DIRECTIVES.write) == (True, True)
    assert DEFAULT_DIRECTIVES.scope is Scope.PERSONA
    assert DEFAULT_DIRECTIVES.dims is None


def test_cache_control() -> None:
    no_cache = directives(Cache_Control="no-cache")
    assert (no_cache.read, no_cache.write, no_cache.bypass) == (False, True, False)
    no_store = directives(Cache_Control="No-Store")
    assert (no_store.read, no_store.write, no_store.bypass) == (False, False, True)
    assert directives(Cache_Control="max-age=60").max_age == 60
    assert directives(Cache_Control='private, max-age="30"').max_age == 30
    both = directives(Cache_Control="no-cache, max-age=0")
    assert (both.read, both.write, both.max_age) == (False, True, 0)
    ignored = directives(Cache_Control="private, no-transform")
    assert (ignored.read, ignored.write, ignored.max_age) == (True, True, None)


@pytest.mark.parametrize("value", ["max-age=abc", "max-age=-1", "max-age=", "max-age=1.5"])
def test_bad_max_age_is_a_400(value: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        directives(Cache_Control=value)
    assert (http_status(caught.value), caught.value.param) == (400, "Cache-Control")


def test_cache_scope() -> None:
    assert directives(X_Cache_Scope="user").scope is Scope.USER
    assert directives(X_Cache_Scope=" Tenant ").scope is Scope.TENANT
    assert directives(X_Cache_Scope="persona").scope is Scope.PERSONA
    with pytest.raises(InvalidRequest) as caught:
        directives(X_Cache_Scope="global")
    assert (http_status(caught.value), caught.value.param) == (400, "X-Cache-Scope")
    for scope in ("persona", "user", "tenant"):
        assert scope in caught.value.message


def test_persona_dims() -> None:
    assert directives(X_Cache_Persona_Dims="density, Experience").dims == ("experience", "density")
    assert directives(X_Cache_Persona_Dims="none").dims == ()
    assert directives(X_Cache_Persona_Dims="interests,tone,tone").dims == ("tone", "interests")
    for bad in ("shoe_size", "", " , ", "none,tone"):
        with pytest.raises(InvalidRequest) as caught:
            directives(X_Cache_Persona_Dims=bad)
        assert (http_status(caught.value), caught.value.param) == (400, "X-Cache-Persona-Dims")
        for dimension in PERSONA_DIMENSIONS:
            assert dimension in caught.value.message
