"""The provider prompt-cache key (docs/design.md §11, issue 14 item 4): a chat request without a
`prompt_cache_key` reaches the upstream with one derived from the tenant and its system prompt
(stable for both, different across either, opaque), a client's own key is forwarded untouched,
PROMPT_CACHE_KEY=off sends none, and Sidecache's own X-Cache-Key never changes with it."""

from __future__ import annotations

import re
from typing import Any

import pytest

from proxy.handlers.prompt_cache import prompt_cache_key, system_prompt, with_prompt_cache_key
from proxy.settings import SettingsError
from proxy.settings_load import load_settings
from tests.fixtures.sidecar import OTHER_API_KEY, Sidecar, SidecarFactory, Stub

MODEL = "gpt-4o-mini"
SYSTEM = "You are a patient physics tutor. Answer in three sentences at most."
KEY_FORMAT = re.compile(r"^sc-[0-9a-f]{32}$")
SECRET = {"CACHE_KEY_SECRET": "prompt-cache-test-secret"}  # the same tenant ids on two sidecars


def chat_body(question: str, system: str | None = SYSTEM, **extra: Any) -> dict[str, Any]:
    messages: list[dict[str, Any]] = (
        [] if system is None else [{"role": "system", "content": system}]
    )
    messages.append({"role": "user", "content": question})
    return {"model": MODEL, "messages": messages, "max_tokens": 5, **extra}


def last_body(stub: Stub) -> dict[str, Any]:
    received = stub.fake.requests[-1].body
    assert isinstance(received, dict)
    return received


def sent_key(sidecar: Sidecar, stub: Stub, body: dict[str, Any], api_key: str | None = None) -> Any:
    """The prompt_cache_key the upstream received for `body` (a miss), or None."""
    calls = stub.calls
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
    answer = sidecar.request("POST", "/v1/chat/completions", body, headers)
    assert answer.status == 200, answer.body
    assert stub.calls == calls + 1, "the request was not a miss"
    return last_body(stub).get("prompt_cache_key")


# -- the key itself ------------------------------------------------------------------------


def test_the_key_is_stable_short_and_opaque() -> None:
    body = chat_body("What is inertia?")
    key = prompt_cache_key("acme", body)
    assert key is not None and KEY_FORMAT.match(key)
    assert prompt_cache_key("acme", chat_body("Another question entirely.")) == key
    # The same system message with its fields in another order is the same prompt.
    reordered = {**body, "messages": [{"content": SYSTEM, "role": "system"}, body["messages"][1]]}
    assert prompt_cache_key("acme", reordered) == key
    assert prompt_cache_key("globex", body) != key
    assert prompt_cache_key("acme", chat_body("What is inertia?", system="Be brief.")) != key
    assert "acme" not in key and "tutor" not in key


def test_the_system_prompt_is_the_leading_system_and_developer_messages() -> None:
    lead = [
        {"role": "developer", "content": "Rules."},
        {"role": "system", "content": "Persona."},
    ]
    later_system = {"role": "system", "content": "Not part of the prefix."}
    body = {"messages": [*lead, {"role": "user", "content": "hi"}, later_system]}
    assert system_prompt(body) == lead
    assert system_prompt({"messages": [{"role": "user", "content": "hi"}, *lead]}) == []
    # No system prompt: no key (one per tenant for every conversation would overload it).
    assert prompt_cache_key("acme", chat_body("hi", system=None)) is None
    assert with_prompt_cache_key(chat_body("hi", system=None), "acme") is None


def test_a_responses_body_keys_on_instructions_and_leading_system_items() -> None:
    instructions = {"model": MODEL, "instructions": SYSTEM, "input": "What is inertia?"}
    key = prompt_cache_key("acme", instructions)
    assert key is not None and KEY_FORMAT.match(key)
    assert prompt_cache_key("acme", {**instructions, "input": "Something else"}) == key
    assert prompt_cache_key("globex", instructions) != key
    items = {
        "model": MODEL,
        "input": [
            {"type": "message", "role": "developer", "content": SYSTEM},
            {"type": "message", "role": "user", "content": "What is inertia?"},
        ],
    }
    assert system_prompt(items) == [items["input"][0]]
    assert prompt_cache_key("acme", items) not in (None, key)
    assert prompt_cache_key("acme", {"model": MODEL, "input": "No instructions"}) is None


def test_a_key_the_client_sent_is_kept() -> None:
    body = chat_body("hi", prompt_cache_key="client-own")
    assert with_prompt_cache_key(body, "acme") is None
    added = with_prompt_cache_key(chat_body("hi"), "acme")
    assert added is not None and added["prompt_cache_key"] == prompt_cache_key("acme", added)


def test_bad_prompt_cache_key_setting_stops_start_up_naming_it() -> None:
    assert load_settings({}).upstream.prompt_cache_key is True
    assert load_settings({"PROMPT_CACHE_KEY": "off"}).upstream.prompt_cache_key is False
    with pytest.raises(SettingsError, match="PROMPT_CACHE_KEY='sometimes'"):
        load_settings({"PROMPT_CACHE_KEY": "sometimes"})


# -- through a running sidecar --------------------------------------------------------------


def test_the_upstream_receives_a_key_per_tenant_and_system_prompt(
    make_sidecar: SidecarFactory, stub: Stub
) -> None:
    sidecar = make_sidecar()
    first = sent_key(sidecar, stub, chat_body("What is inertia?"))
    assert isinstance(first, str) and KEY_FORMAT.match(first)
    assert sent_key(sidecar, stub, chat_body("What is momentum?")) == first
    assert sent_key(sidecar, stub, chat_body("What is inertia?"), OTHER_API_KEY) not in (
        None,
        first,
    )
    assert sent_key(sidecar, stub, chat_body("What is inertia?", system="Be brief.")) != first
    assert sent_key(sidecar, stub, chat_body("What is inertia?", system=None)) is None
    # A stream gets it too, beside the usage chunk the sidecar always asks for.
    streamed = chat_body("What is work?", stream=True)
    assert sent_key(sidecar, stub, streamed) == first
    assert last_body(stub)["stream_options"] == {"include_usage": True}
    # The client's own key goes upstream untouched.
    own = chat_body("What is energy?", prompt_cache_key="client-chosen")
    assert sent_key(sidecar, stub, own) == "client-chosen"


def test_off_sends_no_key_and_the_cache_key_never_changes(
    make_sidecar: SidecarFactory, stub: Stub
) -> None:
    on = make_sidecar(**SECRET)
    off = make_sidecar(PROMPT_CACHE_KEY="off", **SECRET)
    body = chat_body("Why do planets orbit?")
    answers = []
    for sidecar in (on, off):
        answer = sidecar.request("POST", "/v1/chat/completions", body)
        assert answer.status == 200 and answer.headers["x-cache"] == "MISS"
        answers.append((answer.headers["x-cache-key"], last_body(stub)))
    (key_on, sent_on), (key_off, sent_off) = answers
    assert key_on == key_off
    assert KEY_FORMAT.match(sent_on["prompt_cache_key"])
    assert "prompt_cache_key" not in sent_off
    # The same request with the client's own key is the same entry: a hit, no upstream call.
    calls = stub.calls
    again = on.request("POST", "/v1/chat/completions", {**body, "prompt_cache_key": "mine"})
    assert again.headers["x-cache"] == "HIT" and again.headers["x-cache-key"] == key_on
    assert stub.calls == calls


def test_a_responses_request_reaches_the_upstream_with_a_key(
    make_sidecar: SidecarFactory, stub: Stub
) -> None:
    keyed, unkeyed = make_sidecar(**SECRET), make_sidecar(**SECRET, PROMPT_CACHE_KEY="off")
    body = {"model": MODEL, "instructions": SYSTEM, "input": "What is torque?"}
    answer = keyed.request("POST", "/v1/responses", body)
    assert answer.status == 200 and answer.headers["x-cache"] == "MISS", answer.body
    first = last_body(stub).get("prompt_cache_key")
    assert isinstance(first, str) and KEY_FORMAT.match(first)
    keyed.request("POST", "/v1/responses", {**body, "input": "What is a lever?"})
    assert last_body(stub).get("prompt_cache_key") == first  # same tenant, same instructions
    keyed.request("POST", "/v1/responses", body, {"Authorization": f"Bearer {OTHER_API_KEY}"})
    assert last_body(stub).get("prompt_cache_key") not in (None, first)  # another tenant
    off = unkeyed.request("POST", "/v1/responses", {**body, "input": "What is work?"})
    assert "prompt_cache_key" not in last_body(stub)
    again = unkeyed.request("POST", "/v1/responses", body)
    assert again.headers["x-cache-key"] == answer.headers["x-cache-key"]  # not in the key
    assert off.status == 200
