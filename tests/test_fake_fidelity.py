"""What users meet on the real API, met offline through the sidecar (issue 21, item 5): an
unknown model is a 404 that is never cached, and tool-call and logprobs answers replay on a
hit (JSON or SSE, either shape first) exactly as the miss delivered them."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import openai
import pytest
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletion

from proxy.fake_upstream import FakeUpstream, start_fake_upstream
from tests.fixtures.sidecar import Sidecar, Stub

TOOLS: list[Any] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string"},
                    "days": {"type": "integer"},
                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                },
                "required": ["city"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "get_time",
            "parameters": {"type": "object", "properties": {"tz": {"type": "string"}}},
        },
    },
]
MESSAGES: list[Any] = [{"role": "user", "content": "What is the weather in Paris?"}]
UNKNOWN = "gpt-4o-mini-nonexistent"
UNKNOWN_BODIES: dict[str, dict[str, Any]] = {
    "/v1/chat/completions": {"model": UNKNOWN, "messages": [{"role": "user", "content": "hi"}]},
    "/v1/completions": {"model": UNKNOWN, "prompt": "hi"},
    "/v1/embeddings": {"model": UNKNOWN, "input": ["a", "b"]},
    "/v1/moderations": {"model": UNKNOWN, "input": "hi"},
}


@pytest.mark.parametrize("path", list(UNKNOWN_BODIES))
def test_unknown_model_is_404_and_never_cached(sidecar: Sidecar, stub: Stub, path: str) -> None:
    for attempt in (1, 2):
        answer = sidecar.request("POST", path, UNKNOWN_BODIES[path])
        assert answer.status == 404
        assert answer.headers.get("x-cache") != "HIT"
        assert answer.json()["error"] == {
            "message": f"The model `{UNKNOWN}` does not exist or you do not have access to it.",
            "type": "invalid_request_error",
            "param": None,
            "code": "model_not_found",
        }
        assert stub.calls == attempt  # the repeat went upstream again: nothing was stored


def test_unknown_model_through_the_sdk_and_the_extra_models_knob(
    sidecar: Sidecar, stub: Stub
) -> None:
    client = sidecar.client()
    with pytest.raises(openai.NotFoundError) as caught:
        client.embeddings.create(model="my-embedder", input="x")
    assert caught.value.code == "model_not_found"
    stub.fake.extra_models = frozenset({"my-embedder"})
    assert len(client.embeddings.create(model="my-embedder", input="x").data) == 1
    assert "my-embedder" in {m.id for m in client.models.list().data}


def _chat(
    client: openai.OpenAI, stream: bool, **params: Any
) -> tuple[str, ChatCompletion, list[Any]]:
    """(X-Cache, the completion as the SDK parses or assembles it, the raw chunks)."""
    messages = MESSAGES
    if not stream:
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=messages, **params
        )
        return raw.headers["x-cache"], raw.parse(), []
    with client.chat.completions.with_streaming_response.create(
        model="gpt-4o-mini", messages=messages, stream=True, **params
    ) as raw:
        state: ChatCompletionStreamState[Any] = ChatCompletionStreamState()
        chunks = list(raw.parse())
        for chunk in chunks:
            state.handle_chunk(chunk)
        return raw.headers["x-cache"], state.get_final_completion(), chunks


def _calls(completion: ChatCompletion) -> list[tuple[str, str, str, str]]:
    """The tool calls as the SDK parsed them (from JSON or assembled from a stream)."""
    calls = completion.choices[0].message.tool_calls or []
    return [(c.id, c.type, c.function.name, c.function.arguments) for c in calls]  # type: ignore[union-attr]


SHAPES = [(False, False), (True, True), (False, True), (True, False)]
SHAPE_IDS = ["json-json", "sse-sse", "json-then-sse", "sse-then-json"]


@pytest.mark.parametrize(("first", "second"), SHAPES, ids=SHAPE_IDS)
def test_tool_calls_replay_on_a_hit(
    any_sidecar: Sidecar, stub: Stub, first: bool, second: bool
) -> None:
    client = any_sidecar.client()
    status, miss, _ = _chat(client, first, tools=TOOLS, tool_choice="required")
    assert status == "MISS"
    calls = _calls(miss)
    assert [name for _, _, name, _ in calls] == ["get_weather", "get_time"]
    assert all(
        call_id.startswith("call_") and args.startswith("{") for call_id, _, _, args in calls
    )
    assert miss.choices[0].finish_reason == "tool_calls"
    assert miss.choices[0].message.content is None

    status, hit, chunks = _chat(client, second, tools=TOOLS, tool_choice="required")
    assert status == "HIT"
    assert stub.calls == 1
    assert _calls(hit) == calls  # ids, names and arguments
    assert hit.choices[0].message.content is None
    assert hit.choices[0].finish_reason == "tool_calls"
    if second:
        assert chunks[0].choices[0].delta.role == "assistant"


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_a_named_tool_choice_replays(sidecar: Sidecar, stub: Stub, stream: bool) -> None:
    named = {"type": "function", "function": {"name": "get_time"}}
    client = sidecar.client()
    status, miss, _ = _chat(client, stream, tools=TOOLS, tool_choice=named)
    assert status == "MISS"
    calls = _calls(miss)
    assert [name for _, _, name, _ in calls] == ["get_time"]
    assert miss.choices[0].finish_reason == "stop"  # as OpenAI ends a call forced by name
    status, hit, _ = _chat(client, not stream, tools=TOOLS, tool_choice=named)
    assert (status, stub.calls) == ("HIT", 1)
    assert _calls(hit) == calls
    assert hit.choices[0].finish_reason == "stop"


@pytest.mark.parametrize(("first", "second"), SHAPES, ids=SHAPE_IDS)
def test_logprobs_replay_on_a_hit(
    any_sidecar: Sidecar, stub: Stub, first: bool, second: bool
) -> None:
    client = any_sidecar.client()
    status, miss, _ = _chat(client, first, logprobs=True, top_logprobs=3)
    assert status == "MISS"
    logprobs = miss.choices[0].logprobs
    assert logprobs is not None and logprobs.content
    assert "".join(entry.token for entry in logprobs.content) == miss.choices[0].message.content
    assert all(len(entry.top_logprobs) == 3 for entry in logprobs.content)

    status, hit, _ = _chat(client, second, logprobs=True, top_logprobs=3)
    assert (status, stub.calls) == ("HIT", 1)
    assert hit.choices[0].logprobs == logprobs
    assert hit.choices[0].message.content == miss.choices[0].message.content
    # The stored answer keeps OpenAI's whole logprobs object, `"refusal": null` included.
    body = {"model": "gpt-4o-mini", "messages": MESSAGES, "logprobs": True, "top_logprobs": 3}
    raw = any_sidecar.request("POST", "/v1/chat/completions", body)
    assert (raw.status, raw.headers["x-cache"], stub.calls) == (200, "HIT", 1)
    assert raw.json()["choices"][0]["logprobs"]["refusal"] is None
    assert set(raw.json()["choices"][0]["logprobs"]) == {"content", "refusal"}


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_completion_logprobs_replay(sidecar: Sidecar, stub: Stub, stream: bool) -> None:
    client = sidecar.client()

    def ask(as_stream: bool) -> tuple[str, str, dict[str, list[Any]]]:
        params: dict[str, Any] = {"model": "gpt-3.5-turbo-instruct", "prompt": "Say hi"}
        if not as_stream:
            raw = client.completions.with_raw_response.create(logprobs=2, **params)
            choice = raw.parse().choices[0]
            assert choice.logprobs is not None
            return raw.headers["x-cache"], choice.text, choice.logprobs.model_dump()
        with client.completions.with_streaming_response.create(
            logprobs=2, stream=True, **params
        ) as raw:
            text, merged = "", {}
            for chunk in raw.parse():
                for choice in chunk.choices:
                    text += choice.text
                    for field, values in (
                        choice.logprobs.model_dump() if choice.logprobs else {}
                    ).items():
                        merged[field] = merged.get(field, []) + (values or [])
            return raw.headers["x-cache"], text, merged

    status, text, logprobs = ask(stream)
    assert status == "MISS"
    assert "".join(logprobs["tokens"]) == text
    assert all(len(top) == 2 for top in logprobs["top_logprobs"])
    assert ask(not stream) == ("HIT", text, logprobs)
    assert ask(stream) == ("HIT", text, logprobs)
    assert stub.calls == 1


# The fake on its own: the wire shapes above, as OpenAI sends them.


@pytest.fixture
async def fake_client() -> AsyncIterator[tuple[FakeUpstream, openai.AsyncOpenAI]]:
    fake = FakeUpstream()
    runner, url = await start_fake_upstream(fake)
    client = openai.AsyncOpenAI(base_url=url, api_key="sk-test", max_retries=0)
    try:
        yield fake, client
    finally:
        await client.close()
        await runner.cleanup()


async def test_tool_calls_stream_as_openai_chunks_them(
    fake_client: tuple[FakeUpstream, openai.AsyncOpenAI],
) -> None:
    _, client = fake_client
    stream = await client.chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, tools=TOOLS, tool_choice="required", stream=True
    )
    deltas = [chunk.choices[0].delta async for chunk in stream if chunk.choices]
    first = deltas[0]
    assert (first.role, first.content) == ("assistant", None)
    assert first.tool_calls is not None and first.tool_calls[0].index == 0
    opening = first.tool_calls[0]
    assert opening.id and opening.function is not None
    assert (opening.function.name, opening.function.arguments) == ("get_weather", "")
    fragments = [d.tool_calls[0] for d in deltas[1:] if d.tool_calls]
    second = [f for f in fragments if f.id is not None]
    assert [(f.index, f.function.name if f.function else None) for f in second] == [(1, "get_time")]
    # Arguments come in several fragments carrying only index and arguments.
    pieces = [f for f in fragments if f.id is None]
    assert len(pieces) > 2 and all(f.function and f.function.name is None for f in pieces)
    plain = await client.chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, tools=TOOLS, tool_choice="required"
    )
    whole = plain.choices[0].message.tool_calls or []
    arguments = "".join(f.function.arguments or "" for f in pieces if f.index == 0 and f.function)
    # Deterministic: the same request gets the same arguments, streamed or not.
    assert arguments == whole[0].function.arguments  # type: ignore[union-attr]
    assert json.loads(arguments)["unit"] in ("celsius", "fahrenheit")


async def test_tools_without_a_demand_answer_text_unless_the_knob_says(
    fake_client: tuple[FakeUpstream, openai.AsyncOpenAI],
) -> None:
    fake, client = fake_client
    plain = await client.chat.completions.create(model="gpt-4o", messages=MESSAGES, tools=TOOLS)
    assert plain.choices[0].message.tool_calls is None and plain.choices[0].message.content
    fake.prefer_tools = True
    called = await client.chat.completions.create(
        model="gpt-4o", messages=MESSAGES, tools=TOOLS, parallel_tool_calls=False
    )
    calls = called.choices[0].message.tool_calls or []
    assert [c.function.name for c in calls] == ["get_weather"]  # type: ignore[union-attr]
    assert called.choices[0].finish_reason == "tool_calls"
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(
            model="gpt-4o", messages=MESSAGES, tool_choice="required"
        )
    assert caught.value.param == "tool_choice"


async def test_logprobs_stream_one_entry_per_chunk(
    fake_client: tuple[FakeUpstream, openai.AsyncOpenAI],
) -> None:
    _, client = fake_client
    stream = await client.chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, logprobs=True, top_logprobs=2, stream=True
    )
    chunks = [chunk.choices[0] async for chunk in stream if chunk.choices]
    texts = [c for c in chunks if c.delta.content]
    assert all(c.logprobs and c.logprobs.content and len(c.logprobs.content) == 1 for c in texts)
    assert all(c.logprobs.content[0].token == c.delta.content for c in texts)  # type: ignore[union-attr,index]
    plain = await client.chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, logprobs=True, top_logprobs=2
    )
    entries = plain.choices[0].logprobs.content or []  # type: ignore[union-attr]
    streamed = [c.logprobs.content[0] for c in texts]  # type: ignore[union-attr,index]
    assert streamed == entries
    assert all(e.top_logprobs[0].token == e.token for e in entries)
    assert all(e.top_logprobs[1].logprob < e.logprob for e in entries)
    without = await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert without.choices[0].logprobs is None
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, top_logprobs=2)
    assert caught.value.param == "top_logprobs"
