"""Embeddings through the sidecar: cached per input item, answered in the original order and in
the requested encoding, with the usage of every input (docs/design.md §3, issue 21 item 4)."""

from __future__ import annotations

import random
from typing import Any

import openai
import pytest

from tests.fixtures.sidecar import API_KEY, OTHER_API_KEY, Sidecar, Stub, http_request

MODEL = "text-embedding-3-small"


def texts(count: int, prefix: str = "lesson") -> list[str]:
    """Distinct inputs with 1 to 4 words each, so token counts differ between items."""
    return [" ".join([f"{prefix}{n}"] + ["word"] * (n % 4)) for n in range(count)]


def words(items: list[str]) -> int:
    """What the stub charges for string inputs: their words."""
    return sum(len(item.split()) for item in items)


def direct(stub: Stub) -> openai.OpenAI:
    """The SDK pointed at the stub itself, to learn what the upstream gives for an input."""
    return openai.OpenAI(base_url=stub.url, api_key=API_KEY, max_retries=0)


def sent(stub: Stub) -> Any:
    """The body of the last request the stub received."""
    return stub.fake.requests[-1].body


def embed(client: openai.OpenAI, inputs: Any, **kwargs: Any) -> tuple[Any, dict[str, str]]:
    raw = client.embeddings.with_raw_response.create(model=MODEL, input=inputs, **kwargs)
    return raw.parse(), dict(raw.headers)


def vectors(answer: Any) -> list[list[float]]:
    assert [item.index for item in answer.data] == list(range(len(answer.data)))
    return [item.embedding for item in answer.data]


def test_seventy_of_a_hundred_cached_sends_thirty(any_sidecar: Sidecar, stub: Stub) -> None:
    client = any_sidecar.client()
    inputs = texts(100)
    cached = random.Random(7).sample(range(100), 70)
    warm_inputs = [inputs[i] for i in sorted(cached)]
    first, headers = embed(client, warm_inputs)
    assert headers["x-cache"] == "MISS"
    assert headers["x-cache-hits"] == "0/70"
    assert first.usage.prompt_tokens == words(warm_inputs)
    calls = stub.calls

    answer, headers = embed(client, inputs)
    others = [inputs[i] for i in range(100) if i not in cached]
    assert stub.calls == calls + 1
    assert stub.fake.embedding_inputs_per_call[-1] == 30
    assert stub.fake.requests[-1].path == "/v1/embeddings"
    assert sent(stub)["input"] == others  # only the 30 others, in their original order
    assert headers["x-cache"] == "MISS"
    assert headers["x-cache-hits"] == "70/100"
    # The answer's usage counts every input, cached or fetched (README: usage on hits).
    assert answer.usage.prompt_tokens == words(inputs)
    assert answer.usage.total_tokens == words(inputs)

    again, headers = embed(client, inputs)
    assert stub.calls == calls + 1
    assert headers["x-cache"] == "HIT"
    assert headers["x-cache-hits"] == "100/100"
    assert again.usage.prompt_tokens == words(inputs)

    # Every vector is what the upstream gives for that input, in the original order.
    expected = vectors(direct(stub).embeddings.create(model=MODEL, input=inputs))
    assert vectors(answer) == expected
    assert vectors(again) == expected


def test_base64_and_float_give_the_same_vectors(any_sidecar: Sidecar, stub: Stub) -> None:
    client = any_sidecar.client()
    inputs = texts(5, "encoding")
    default, headers = embed(client, inputs)  # the SDK asks for base64 and decodes it
    assert headers["x-cache"] == "MISS"
    assert sent(stub)["encoding_format"] == "base64"
    floats, headers = embed(client, inputs, encoding_format="float")
    assert headers["x-cache"] == "HIT"  # the encoding is not part of the key
    assert vectors(floats) == vectors(default)
    assert vectors(floats) == vectors(
        direct(stub).embeddings.create(model=MODEL, input=inputs, encoding_format="float")
    )


def test_raw_http_without_encoding_format_gets_floats(any_sidecar: Sidecar, stub: Stub) -> None:
    inputs = ["plain http", "two"]
    body = {"model": MODEL, "input": inputs}
    for expected_status in ("MISS", "HIT"):
        answer = any_sidecar.request("POST", "/v1/embeddings", body)
        assert answer.status == 200
        assert answer.headers["x-cache"] == expected_status
        data = answer.json()["data"]
        assert [item["index"] for item in data] == [0, 1]
        for item in data:
            assert isinstance(item["embedding"], list)
            assert all(isinstance(x, float) for x in item["embedding"])
    expected = vectors(
        direct(stub).embeddings.create(model=MODEL, input=inputs, encoding_format="float")
    )
    assert [item["embedding"] for item in data] == expected


@pytest.mark.parametrize(
    "inputs",
    [
        "one single string",
        [101, 202, 303],
        [[1, 2, 3], [4, 5], [6]],
        ["text and tokens", [7, 8, 9]],
    ],
    ids=["string", "token-array", "token-arrays", "both"],
)
def test_input_shapes_are_cached(any_sidecar: Sidecar, stub: Stub, inputs: Any) -> None:
    client = any_sidecar.client()
    first, headers = embed(client, inputs)
    assert headers["x-cache"] == "MISS"
    assert sent(stub)["input"] == (
        [inputs] if isinstance(inputs, str) or isinstance(inputs[0], int) else inputs
    )
    second, headers = embed(client, inputs)
    assert headers["x-cache"] == "HIT"
    assert stub.calls == 1
    assert vectors(second) == vectors(first)
    assert vectors(first) == vectors(direct(stub).embeddings.create(model=MODEL, input=inputs))


def test_dimensions_are_part_of_the_key(any_sidecar: Sidecar, stub: Stub) -> None:
    client = any_sidecar.client()
    full, _ = embed(client, ["dimensions matter"])
    short, headers = embed(client, ["dimensions matter"], dimensions=4)
    assert headers["x-cache"] == "MISS"
    assert stub.calls == 2
    assert sent(stub)["dimensions"] == 4
    assert len(vectors(short)[0]) == 4
    assert len(vectors(full)[0]) != 4
    assert embed(client, ["dimensions matter"], dimensions=4)[1]["x-cache"] == "HIT"
    assert embed(client, ["dimensions matter"], dimensions=5)[1]["x-cache"] == "MISS"


@pytest.mark.parametrize(
    "value",
    [[], "", [""], ["fine", ""], ["text", 5], [1, "text"], ["text", None], [[1, 2], []], [1.5]],
    ids=[
        "empty-list",
        "empty-string",
        "empty-item",
        "empty-second-item",
        "string-then-int",
        "int-then-string",
        "null-item",
        "empty-token-array",
        "float-token",
    ],
)
def test_bad_input_is_a_400_naming_input(sidecar: Sidecar, stub: Stub, value: Any) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        sidecar.client().embeddings.create(model=MODEL, input=value)
    assert caught.value.param == "input"
    assert caught.value.type == "invalid_request_error"
    assert stub.calls == 0


def test_upstream_400_passes_through_and_stores_nothing(any_sidecar: Sidecar, stub: Stub) -> None:
    body = {"model": MODEL, "input": ["a good one", "a BAD_INPUT one"], "encoding_format": "base64"}
    through = any_sidecar.request("POST", "/v1/embeddings", body)
    upstream = http_request(stub.url.removesuffix("/v1"), "POST", "/v1/embeddings", body)
    assert upstream.status == 400
    assert through.status == 400
    assert through.json() == upstream.json()
    assert through.json()["error"]["param"] == "input"
    assert stub.calls == 2

    client = any_sidecar.client()
    _, headers = embed(client, ["a good one"])
    assert headers["x-cache"] == "MISS"  # the good item of the failed call was not stored
    assert stub.calls == 3


def test_persona_does_not_split_embeddings(any_sidecar: Sidecar, stub: Stub) -> None:
    beginner = any_sidecar.client(**{"X-Persona-Experience": "beginner", "X-User-Id": "u1"})
    expert = any_sidecar.client(
        **{"X-Persona-Experience": "expert", "X-Persona-Tone": "formal", "X-User-Id": "u2"}
    )
    first, headers = embed(beginner, ["persona blind"])
    assert headers["x-cache"] == "MISS"
    second, headers = embed(expert, ["persona blind"])
    assert headers["x-cache"] == "HIT"
    assert vectors(second) == vectors(first)
    assert stub.calls == 1


def test_another_api_key_never_shares(any_sidecar: Sidecar, stub: Stub) -> None:
    embed(any_sidecar.client(), ["tenant bound", "second"])
    _, headers = embed(any_sidecar.client(api_key=OTHER_API_KEY), ["tenant bound", "second"])
    assert headers["x-cache"] == "MISS"
    assert headers["x-cache-hits"] == "0/2"
    assert stub.calls == 2
    assert stub.fake.requests[-1].headers["authorization"] == f"Bearer {OTHER_API_KEY}"
