"""Pass-through tenancy takes every credential header the upstream may read (issue 19 item 1):
`Authorization`, Azure's `api-key`, Anthropic's `x-api-key`; a request with none of them is
answered but never reads or writes the cache (docs/design.md §3)."""

from __future__ import annotations

from typing import Any

import openai
import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from proxy.tenancy import pass_through_credential
from tests.fixtures.sidecar import API_KEY, Sidecar, SidecarFactory, Stub
from tests.recorder_support import Recorder, recorder

__all__ = ["recorder"]  # the fixture, used by name

MESSAGES: list[Any] = [{"role": "user", "content": "Which key am I?"}]
CHAT: dict[str, Any] = {"model": "gpt-4o-mini", "messages": MESSAGES}
KEY_A, KEY_B = "azure-key-aaaa", "azure-key-bbbb"


def chat(sidecar: Sidecar, headers: dict[str, str]) -> tuple[int, str, str | None]:
    """(status, X-Cache, the answer's content) of a chat request with exactly `headers`."""
    # http_request adds an Authorization unless the test gives its own; "" removes it below.
    answer = sidecar.request("POST", "/v1/chat/completions", CHAT, {"Authorization": "", **headers})
    content = answer.json()["choices"][0]["message"]["content"] if answer.status == 200 else None
    return answer.status, answer.headers.get("x-cache", ""), content


@pytest.fixture
def azure(make_sidecar: SidecarFactory, recorder: Recorder) -> Sidecar:
    recorder.keys = {KEY_A: "a", KEY_B: "b"}
    return make_sidecar(UPSTREAM_BASE_URL=recorder.url)


@pytest.mark.parametrize("header", ["api-key", "x-api-key"])
def test_each_key_of_an_api_key_upstream_is_its_own_tenant(
    azure: Sidecar, recorder: Recorder, header: str
) -> None:
    first = chat(azure, {header: KEY_A})
    assert first[:2] == (200, "MISS")
    assert chat(azure, {header: KEY_A}) == (200, "HIT", first[2])
    # Another right key: its own answer, not a HIT on A's (it was one before this fix).
    assert chat(azure, {header: KEY_B}) == (200, "MISS", "answer #2 for b")
    # A wrong key reaches the upstream and gets its 401, never A's answer.
    assert chat(azure, {header: "azure-key-wrong"})[:2] == (401, "MISS")
    # No key at all: the upstream's 401, and the cache was not read.
    assert chat(azure, {}) == (401, "BYPASS", None)
    assert recorder.chat_calls == 4


def test_no_credential_never_reads_or_writes_the_cache(
    make_sidecar: SidecarFactory, recorder: Recorder
) -> None:
    """An upstream that takes no credential (a local model server) answers both calls: the
    first answer was not stored for the second, nor for anyone else."""
    recorder.open = True
    sidecar = make_sidecar(UPSTREAM_BASE_URL=recorder.url)
    assert chat(sidecar, {}) == (200, "BYPASS", "answer #1 for None")
    assert chat(sidecar, {}) == (200, "BYPASS", "answer #2 for None")
    assert chat(sidecar, {"Authorization": ""}) == (200, "BYPASS", "answer #3 for None")
    assert recorder.chat_calls == 3


UNDERSTOOD: list[tuple[str, dict[str, Any]]] = [
    ("/v1/chat/completions", CHAT),
    ("/v1/completions", {"model": "gpt-3.5-turbo-instruct", "prompt": "Say hi"}),
    ("/v1/embeddings", {"model": "text-embedding-3-small", "input": ["no", "key"]}),
    ("/v1/moderations", {"input": "no key"}),
]


@pytest.mark.parametrize(
    ("path", "body"), UNDERSTOOD, ids=["chat", "completions", "embeddings", "moderations"]
)
def test_no_credential_is_a_bypass_on_every_understood_route(
    any_sidecar: Sidecar, stub: Stub, path: str, body: dict[str, Any]
) -> None:
    answer = any_sidecar.request("POST", path, body, {"Authorization": ""})
    assert answer.status == 401  # the upstream's own
    assert answer.headers["x-cache"] == "BYPASS"


def test_a_wrong_extra_credential_makes_another_tenant(sidecar: Sidecar, stub: Stub) -> None:
    """Every credential header counts: a right Authorization with a wrong x-api-key beside it
    is not the tenant of the right Authorization alone (the upstream may read either)."""
    right = sidecar.client()
    right.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    extra = openai.OpenAI(
        base_url=sidecar.url, api_key=API_KEY, default_headers={"x-api-key": "sk-ant-wrong"}
    )
    raw = extra.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MESSAGES)
    assert raw.headers["x-cache"] == "MISS"
    assert stub.fake.requests[-1].headers["x-api-key"] == "sk-ant-wrong"
    again = right.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MESSAGES)
    assert again.headers["x-cache"] == "HIT"
    assert stub.calls == 2


def test_managed_mode_forwards_no_client_credential(
    make_sidecar: SidecarFactory, stub: Stub
) -> None:
    """In managed mode the sidecar's key is the only credential the upstream sees: a client's
    x-api-key or api-key would let it choose another upstream account under a shared tenant."""
    sidecar = make_sidecar(UPSTREAM_API_KEY="sk-upstream", SIDECAR_KEYS="sk-sc=team")
    client = openai.OpenAI(
        base_url=sidecar.url,
        api_key="sk-sc",
        default_headers={"x-api-key": "sk-mine", "api-key": "sk-mine-too"},
    )
    client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    client.models.list()
    for seen in stub.fake.requests[-2:]:
        assert seen.headers["authorization"] == "Bearer sk-upstream"
        assert "x-api-key" not in seen.headers and "api-key" not in seen.headers


def test_the_credential_string_is_canonical() -> None:
    def of(*pairs: tuple[str, str]) -> str:
        return pass_through_credential(CIMultiDictProxy(CIMultiDict(pairs)))

    # A lone Authorization keeps the tenant it had before the other headers counted.
    assert of(("Authorization", "Bearer k")) == "Bearer k"
    assert of() == ""
    # Header names are case-insensitive and listed in a fixed order, whatever the client's.
    assert of(("X-API-KEY", "k"), ("authorization", "Bearer k")) == of(
        ("Authorization", "Bearer k"), ("x-api-key", "k")
    )
    # The same key in different headers is a different credential (docs/design.md §3).
    assert len({of(("api-key", "k")), of(("x-api-key", "k")), of(("Authorization", "k"))}) == 3
    # A repeated header counts every value; no set of headers lists like a lone Authorization.
    assert of(("x-api-key", "a"), ("x-api-key", "b")) != of(("x-api-key", "a"))
    assert of(("api-key", "k")) != of(("Authorization", "api-key:k"))


def test_the_sdk_with_an_api_key_header(azure: Sidecar, recorder: Recorder) -> None:
    """What an Azure client does: the key in `api-key`, and no Authorization at all."""
    clients = [
        openai.OpenAI(base_url=azure.url, api_key="unused", default_headers={"api-key": k})
        for k in (KEY_A, KEY_B)
    ]
    answers = [
        c.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=MESSAGES, extra_headers={"Authorization": ""}
        )
        for c in clients
    ]
    assert [a.headers["x-cache"] for a in answers] == ["MISS", "MISS"]
    assert [a.parse().choices[0].message.content for a in answers] == [
        "answer #1 for a",
        "answer #2 for b",
    ]
