"""Canonical request bodies (docs/design.md §3, issue 21): bodies that mean the same, written
the ways real clients write them, share a key; bodies that differ in any semantic field never do.

The properties write JSON text (as a client would send it), decode it with the sidecar's own
decoder and key it with the sidecar's KeyMaker. The end-to-end tests send each of issue 21's
broken cases through a running sidecar and count the upstream's calls.
"""

from __future__ import annotations

import hashlib
import json
import random
from typing import Any

import msgspec
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from proxy.directives import DEFAULT_DIRECTIVES, Directives
from proxy.handlers.json_body import decode_object
from proxy.keys import KeyMaker
from proxy.persona import NO_PERSONA
from proxy.semantic.question import split_question
from proxy.settings import CacheSettings
from tests.fixtures.sidecar import Sidecar, Stub

PROPERTY = settings(
    max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
KEYS = KeyMaker(b"test-secret", CacheSettings())
CHAT, MODERATIONS = "chat.completions", "moderations"
# docs/design.md §3's lists, spelled out so the test does not trust the code under test.
NON_SEMANTIC = ["stream", "stream_options", "user", "safety_identifier", "prompt_cache_key"]
NON_SEMANTIC += ["metadata", "store"]
MEANS_ABSENT: dict[str, Any] = {"n": 1, "logprobs": False, "echo": False}
MEANS_ABSENT |= {"presence_penalty": 0, "frequency_penalty": 0}
EXACT = 2**53  # integers a float holds exactly: the ones a client may write as `n.0`

# Canonical JSON values: integers (never integral floats), non-integral floats, no nulls at the
# top level (nested nulls are kept: inside a JSON Schema `"default": null` says something).
floats = st.floats(allow_nan=False, allow_infinity=False).filter(lambda f: not f.is_integer())
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-EXACT, EXACT),
    floats,
    st.text(max_size=8),
    st.sampled_from(["0", "1", "0.0", "1.0", "null", "false"]),  # text that looks like a value
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=10,
)
messages = st.lists(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["system", "user", "assistant"]), "content": st.text(max_size=20)}
    ),
    min_size=1,
    max_size=3,
)
FIELDS = ["model", "temperature", "top_p", "seed", "max_tokens", "tools", "response_format"]
FIELDS += ["n", "logprobs", "echo", "presence_penalty", "frequency_penalty", "stop"]
names = st.sampled_from(FIELDS) | st.text(min_size=1, max_size=8)
names = names.filter(lambda name: name not in NON_SEMANTIC and name != "messages")


def means_absent(name: str, value: Any) -> bool:
    absent = MEANS_ABSENT.get(name, ...)
    return value is None or (type(value) is type(absent) and value == absent)


bodies = st.builds(
    lambda fields, chat: {**fields, "messages": chat},
    st.dictionaries(names, values, max_size=5).filter(
        lambda fields: not any(means_absent(k, v) for k, v in fields.items())
    ),
    messages,
)


def write(value: Any, rng: random.Random, *, floats_for_ints: bool) -> str:
    """JSON text for `value` as some client might write it: keys in any order, any spacing,
    and (when asked) some integers written as floats (`0.0`, `1e0`)."""
    space = rng.choice(["", " ", "\n  "])
    if isinstance(value, dict):
        items = list(value.items())
        rng.shuffle(items)
        inner = f",{space}".join(
            f"{json.dumps(k)}:{space}{write(v, rng, floats_for_ints=floats_for_ints)}"
            for k, v in items
        )
        return "{" + inner + "}"
    if isinstance(value, list):
        written = (write(v, rng, floats_for_ints=floats_for_ints) for v in value)
        return "[" + f",{space}".join(written) + "]"
    if type(value) is int and floats_for_ints and rng.random() < 0.7:
        return rng.choice([f"{value}.0", f"{float(value)!r}", f"{value}e0", f"{value}.000"])
    return json.dumps(value)


def key_of(text: str, endpoint: str = CHAT, directives: Directives = DEFAULT_DIRECTIVES) -> str:
    body = decode_object(text.encode())
    scope = KEYS.scope_part(directives, NO_PERSONA, None, ())
    return KEYS.request_key("t_tenant", endpoint, body, scope).digest


def as_clients_write_it(body: dict[str, Any], rng: random.Random, data: st.DataObject) -> str:
    """The same request, written another way: integral floats, nulls for absent fields (top
    level and in messages), means-absent values, identity and delivery fields."""
    written = dict(body)
    for name in data.draw(st.lists(names.filter(lambda n: n not in body), max_size=3)):
        written[name] = None
    for name, absent in MEANS_ABSENT.items():
        if name not in written and data.draw(st.booleans()):
            as_float = type(absent) is int and data.draw(st.booleans())
            written[name] = float(absent) if as_float else absent
    for name in data.draw(st.lists(st.sampled_from(NON_SEMANTIC), max_size=4)):
        written[name] = data.draw(values)
    written["messages"] = [
        {**message, "name": None} if data.draw(st.booleans()) else message
        for message in body["messages"]
    ]
    return write(written, rng, floats_for_ints=True)


@PROPERTY
@given(body=bodies, rng=st.randoms(use_true_random=False), data=st.data())
def test_equivalent_bodies_share_a_key(
    body: dict[str, Any], rng: random.Random, data: st.DataObject
) -> None:
    canonical = key_of(json.dumps(body))
    assert key_of(as_clients_write_it(body, rng, data)) == canonical
    # The semantic partition (everything but the question) is made the same way.
    if body["messages"][-1]["role"] == "user" and body["messages"][-1]["content"].strip():
        a = split_question(decode_object(json.dumps(body).encode()))
        b = split_question(decode_object(as_clients_write_it(body, rng, data).encode()))
        assert a is not None and b is not None and a.text == b.text
        parts = [KEYS.partition_key("t", CHAT, q.rest, ("t",), "ix") for q in (a, b)]
        assert parts[0] == parts[1]


def replace_somewhere(value: Any, data: st.DataObject) -> Any:
    """`value` with one part of it (itself, or something nested) replaced by another value."""
    if isinstance(value, dict) and value and data.draw(st.booleans()):
        name = data.draw(st.sampled_from(sorted(value)))
        return {**value, name: replace_somewhere(value[name], data)}
    if isinstance(value, list) and value and data.draw(st.booleans()):
        index = data.draw(st.integers(0, len(value) - 1))
        return [*value[:index], replace_somewhere(value[index], data), *value[index + 1 :]]
    return data.draw(values)


def same_json(a: Any, b: Any) -> bool:
    """Equal as JSON values, with types: `0` is not `false` (Python says 0 == False)."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


@PROPERTY
@given(body=bodies, rng=st.randoms(use_true_random=False), data=st.data())
def test_a_semantic_difference_always_changes_the_key(
    body: dict[str, Any], rng: random.Random, data: st.DataObject
) -> None:
    name = data.draw(st.sampled_from(sorted(body)) | names)
    if name == "messages":  # the text of one message (strings are never canonicalised)
        index = data.draw(st.integers(0, len(body["messages"]) - 1))
        changed = [dict(message) for message in body["messages"]]
        changed[index]["content"] = data.draw(st.text(max_size=20))
        new: Any = changed
    else:
        new = replace_somewhere(body[name], data) if name in body else data.draw(values)
    assume(not means_absent(name, new) and not same_json(new, body.get(name)))
    other = {**body, name: new}
    assert key_of(write(body, rng, floats_for_ints=True)) != key_of(
        write(other, rng, floats_for_ints=True)
    )


def test_numbers_compare_by_value_and_type() -> None:
    base = '{"model":"m","messages":[],"temperature":%s}'
    assert key_of(base % "0") == key_of(base % "0.0") == key_of(base % "-0.0")
    assert key_of(base % "1") == key_of(base % "1.0") == key_of(base % "1e0")
    distinct = ["0", "1", "1.5", "false", "true", '"0"', '"0.0"', "2", "1e300"]
    assert len({key_of(base % text) for text in distinct}) == len(distinct)
    # Nested (a JSON Schema in tools), and beyond 64 bits (a float stays a float, never a 400).
    schema = '{"model":"m","tools":[{"parameters":{"minimum":%s,"x":[%s]}}]}'
    assert key_of(schema % ("0", "2")) == key_of(schema % ("0.0", "2.0"))
    assert key_of(schema % ("0", "2")) != key_of(schema % ("0", "2.5"))
    assert key_of(base % "1e20") == key_of(base % "100000000000000000000.0")


def test_nested_nulls_count_outside_messages() -> None:
    with_null = '{"model":"m","response_format":{"schema":{"default":null}}}'
    without = '{"model":"m","response_format":{"schema":{}}}'
    assert key_of(with_null) != key_of(without)
    assert key_of('{"model":"m","temperature":null}') == key_of('{"model":"m"}')


def test_means_absent_is_type_exact() -> None:
    assert key_of('{"model":"m","n":1}') == key_of('{"model":"m"}')
    assert key_of('{"model":"m","n":true}') != key_of('{"model":"m"}')
    assert key_of('{"model":"m","logprobs":0}') != key_of('{"model":"m"}')
    # temperature 1 is not absent: some servers then use the model's own default.
    assert key_of('{"model":"m","temperature":1}') != key_of('{"model":"m"}')


@PROPERTY
@given(text=st.text(min_size=1, max_size=30), other=st.text(min_size=1, max_size=30))
def test_moderation_input_forms_are_one(text: str, other: str) -> None:
    def moderation(value: Any) -> str:
        return key_of(json.dumps({"model": "omni-moderation-latest", "input": value}), MODERATIONS)

    assert moderation(text) == moderation([text])
    assert moderation([text, other]) != moderation(text)
    if text != other:
        assert moderation(text) != moderation([other])


def test_embedding_items_are_keyed_from_canonical_parameters() -> None:
    def item(params: str) -> str:
        decoded = decode_object(params.encode())
        return KEYS.item_key("t", "embeddings", decoded, "some text", ("t",)).digest

    plain = item('{"model":"m","dimensions":256}')
    assert item('{"dimensions":256.0,"model":"m","user":"u","safety_identifier":"s"}') == plain
    assert item('{"model":"m","dimensions":256,"extra":null}') == plain
    assert item('{"model":"m","dimensions":512}') != plain


def test_an_already_canonical_body_keeps_its_key() -> None:
    """Entries stored before canonical keys survive the upgrade: the key of a body with no
    float, null, means-absent value or identity field is exactly the one it had."""
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "seed": 7}
    scope = KEYS.scope_part(DEFAULT_DIRECTIVES, NO_PERSONA, None, ())
    before = msgspec.msgpack.Encoder(order="deterministic").encode(("t", CHAT, scope, body))
    assert KEYS.request_key("t", CHAT, {**body, "stream": True}, scope).digest == (
        hashlib.sha256(before).hexdigest()
    )


# End to end: each of issue 21's broken items, MISS then HIT with one upstream call.

CHAT_BODY: dict[str, Any] = {
    "model": "gpt-4o-mini",
    "messages": [{"role": "user", "content": "Name three primary colours."}],
}


def post(sidecar: Sidecar, path: str, body: dict[str, Any], **headers: str) -> str:
    answer = sidecar.request("POST", path, body, headers)
    assert answer.status == 200, answer.body
    return answer.headers["x-cache"]


def test_temperature_written_as_float_or_int_is_one_entry(sidecar: Sidecar, stub: Stub) -> None:
    # LangChain sends temperature 0.0 and top_p 1.0; the openai SDK sends 0 and 1.
    assert post(sidecar, "/v1/chat/completions", {**CHAT_BODY, "temperature": 0.0}) == "MISS"
    client = sidecar.client()
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=CHAT_BODY["messages"], temperature=0
    )
    assert raw.headers["x-cache"] == "HIT"
    tools_a = {**CHAT_BODY, "top_p": 1, "tools": [_tool(0)]}
    tools_b = {**CHAT_BODY, "top_p": 1.0, "tools": [_tool(0.0)]}
    assert post(sidecar, "/v1/chat/completions", tools_a) == "MISS"
    assert post(sidecar, "/v1/chat/completions", tools_b) == "HIT"
    assert stub.calls == 2


def _tool(minimum: float) -> dict[str, Any]:
    parameters = {"type": "object", "properties": {"n": {"type": "number", "minimum": minimum}}}
    return {"type": "function", "function": {"name": "pick", "parameters": parameters}}


def test_identity_fields_do_not_split_the_cache(sidecar: Sidecar, stub: Stub) -> None:
    client = sidecar.client()
    first = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini",
        messages=CHAT_BODY["messages"],
        extra_body={"safety_identifier": "hash-of-alice", "prompt_cache_key": "app-1"},
    )
    assert first.headers["x-cache"] == "MISS"
    second = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini",
        messages=CHAT_BODY["messages"],
        extra_body={"safety_identifier": "hash-of-bob", "prompt_cache_key": "app-2"},
    )
    assert second.headers["x-cache"] == "HIT"
    assert second.parse().choices[0].message.content == first.parse().choices[0].message.content
    assert stub.calls == 1


def test_safety_identifier_is_the_user_under_user_scope(sidecar: Sidecar, stub: Stub) -> None:
    private = {"X-Cache-Scope": "user"}
    alice = {**CHAT_BODY, "safety_identifier": "alice"}
    assert post(sidecar, "/v1/chat/completions", alice, **private) == "MISS"
    assert post(sidecar, "/v1/chat/completions", alice, **private) == "HIT"
    # Another user's safety_identifier: not alice's entry.
    bob = {**CHAT_BODY, "safety_identifier": "bob"}
    assert post(sidecar, "/v1/chat/completions", bob, **private) == "MISS"
    # safety_identifier comes before user; X-User-Id before both.
    assert post(sidecar, "/v1/chat/completions", {**alice, "user": "bob"}, **private) == "HIT"
    headers = {**private, "X-User-Id": "bob"}
    assert post(sidecar, "/v1/chat/completions", alice, **headers) == "HIT"
    assert stub.calls == 2
    wrong = sidecar.request("POST", "/v1/chat/completions", {**CHAT_BODY, "safety_identifier": 5})
    assert wrong.status == 400
    assert wrong.json()["error"]["param"] == "safety_identifier"


def test_same_meaning_is_one_entry(sidecar: Sidecar, stub: Stub) -> None:
    assert post(sidecar, "/v1/chat/completions", CHAT_BODY) == "MISS"
    same = {**CHAT_BODY, "n": 1, "temperature": None, "logprobs": False, "user": None}
    assert post(sidecar, "/v1/chat/completions", same) == "HIT"
    assert stub.calls == 1


def test_moderation_text_and_one_item_list_are_one_entry(sidecar: Sidecar, stub: Stub) -> None:
    client = sidecar.client()
    text = "Is this sentence fine?"
    first = client.moderations.with_raw_response.create(input=text)
    assert first.headers["x-cache"] == "MISS"
    second = client.moderations.with_raw_response.create(input=[text])
    assert second.headers["x-cache"] == "HIT"
    assert second.parse().results == first.parse().results
    assert stub.calls == 1
