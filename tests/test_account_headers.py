"""Issue 19 item 10: the forwarded headers that change an answer key the entry, and a body that
repeats a JSON key is refused (docs/design.md §3)."""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.directives import DEFAULT_DIRECTIVES, Directives, Scope
from proxy.failures import InvalidRequest
from proxy.handlers.json_body import decode_object, refuse_repeated_keys
from proxy.keys import KeyMaker
from proxy.persona import NO_PERSONA, Persona
from proxy.settings import CacheSettings
from tests.fixtures.sidecar import API_KEY, Sidecar, Stub

MESSAGES: list[Any] = [{"role": "user", "content": "Summarise our roadmap."}]


def x_cache(sidecar: Sidecar, **headers: str) -> str:
    client = openai.OpenAI(
        base_url=sidecar.url, api_key=API_KEY, max_retries=0, default_headers=headers or None
    )
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MESSAGES)
    return raw.headers["x-cache"]


@pytest.mark.parametrize("header", ["OpenAI-Project", "OpenAI-Organization"])
def test_each_project_and_organisation_has_its_own_entries(
    any_sidecar: Sidecar, stub: Stub, header: str
) -> None:
    assert x_cache(any_sidecar, **{header: "proj_a"}) == "MISS"
    assert x_cache(any_sidecar, **{header: "proj_a"}) == "HIT"
    assert x_cache(any_sidecar, **{header: "proj_b"}) == "MISS"  # was a HIT on proj_a's
    assert stub.fake.requests[-1].headers[header.lower()] == "proj_b"
    assert x_cache(any_sidecar) == "MISS"  # none: the account's default project
    assert x_cache(any_sidecar, **{header: "proj_b"}) == "HIT"
    assert stub.calls == 3


def test_keys_without_the_headers_are_unchanged() -> None:
    """Pinned digests of the code before these headers counted: an upgrade keeps every entry."""
    keys = KeyMaker(b"pinned secret", CacheSettings())
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    dims = keys.persona_dims("chat.completions", "gpt-4o-mini")
    tenant = keys.tenant_id("Bearer sk-x")
    digests = [
        keys.request_key(
            tenant, "chat.completions", body, keys.scope_part(d, Persona(tone="formal"), "u1", dims)
        ).digest[:16]
        for d in (DEFAULT_DIRECTIVES, Directives(scope=Scope.USER), Directives(scope=Scope.TENANT))
    ]
    assert digests == ["099f3b72d9cda419", "88e8054edd718f4b", "b2d63dd7a75874c7"]
    scope = keys.scope_part(DEFAULT_DIRECTIVES, NO_PERSONA, None, ())
    item = keys.item_key("t_x", "embeddings", {"model": "m"}, "text", scope)
    assert item.digest[:16] == "44da3cb9d033c84e"


# Repeated JSON keys ---------------------------------------------------------------------------

REPEATS = [
    b'{"model": "gpt-4o-mini", "model": "gpt-4o", "messages": []}',
    b'{"model": "m", "messages": [{"role": "user", "content": "a:b", "content": "c"}]}',
    b'{"a": {"b": {"c": 1, "c": 2}}}',
    b'{"a": "x\\u003ay", "a": 1}',  # an escaped colon beside the repeat
    b'{"k\\u003a": 1, "k\\u003a": 2}',
    b'{"x": 1, "\\u0078": 2}',  # the same key, spelled two ways
]


def checked(raw: bytes) -> dict[str, Any]:
    """The body as a miss reads it: decoded, and refused when a key repeats."""
    body = decode_object(raw)
    refuse_repeated_keys(raw, body)
    return body


@pytest.mark.parametrize("raw", REPEATS)
def test_a_repeated_key_is_refused(raw: bytes) -> None:
    with pytest.raises(InvalidRequest, match="repeats a key"):
        checked(raw)


@pytest.mark.parametrize(
    "raw",
    [
        b'{"content": "time: 10:30, url: http://x:80/"}',
        b'{"a": "x\\u003ay", "b": ["\\u003A", {"c:": ":"}]}',
        b'{"a": [{"k": 1}, {"k": 2}], "b": {"k": {"k": 3}}}',
        b"{}",
    ],
)
def test_colons_and_equal_keys_in_separate_objects_pass(raw: bytes) -> None:
    assert checked(raw) == json.loads(raw)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(st.sampled_from('ab:\\"é')),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(st.sampled_from("ab:"), max_size=3), inner, max_size=4)
    ),
    max_leaves=20,
)


@given(st.dictionaries(st.text(st.sampled_from("ab:"), max_size=3), json_values, max_size=5))
def test_any_body_without_repeats_passes(body: dict[str, Any]) -> None:
    for raw in (json.dumps(body), json.dumps(body, ensure_ascii=False, indent=1)):
        assert checked(raw.encode()) == body


def test_the_sidecar_answers_400_and_sends_nothing(sidecar: Sidecar, stub: Stub) -> None:
    answer = sidecar.request("POST", "/v1/chat/completions", REPEATS[0])
    assert answer.status == 400
    assert answer.json()["error"]["code"] == "invalid_json"
    assert stub.calls == 0
