"""Chat completions through the sidecar with the official SDK: who shares an entry, and who
never does (issue 2, "Done when")."""

from __future__ import annotations

from typing import Any

import openai
import pytest

from tests.fixtures.sidecar import OTHER_API_KEY, Sidecar, Stub

MESSAGES: list[Any] = [
    {"role": "system", "content": "You are a patient tutor."},
    {"role": "user", "content": "Explain photosynthesis in one paragraph."},
]
BEGINNER = {"X-Persona-Experience": "beginner", "X-Persona-Tone": "friendly"}
EXPERT = {"X-Persona-Experience": "expert", "X-Persona-Tone": "friendly"}


def ask(
    client: openai.OpenAI, *, stream: bool = False, **headers: str
) -> tuple[str, str, dict[str, str]]:
    """(X-Cache, answer text, response headers) for one chat request."""
    if stream:
        with client.chat.completions.with_streaming_response.create(
            model="gpt-4o-mini", messages=MESSAGES, stream=True, extra_headers=headers
        ) as raw:
            text = "".join(
                chunk.choices[0].delta.content or "" for chunk in raw.parse() if chunk.choices
            )
            return raw.headers["x-cache"], text, dict(raw.headers)
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=MESSAGES, extra_headers=headers
    )
    completion = raw.parse()
    return raw.headers["x-cache"], completion.choices[0].message.content or "", dict(raw.headers)


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_who_shares_an_entry(any_sidecar: Sidecar, stub: Stub, stream: bool) -> None:
    client = any_sidecar.client()
    status, first, headers = ask(client, stream=stream, **BEGINNER, **{"X-User-Id": "u1"})
    assert status == "MISS"
    assert stub.calls == 1
    assert len(headers["x-cache-key"]) == 16

    status, again, headers = ask(client, stream=stream, **BEGINNER, **{"X-User-Id": "u1"})
    assert (status, again) == ("HIT", first)
    assert int(headers["age"]) >= 0
    assert stub.calls == 1

    # Another persona: never served the beginner's answer.
    assert ask(client, stream=stream, **EXPERT, **{"X-User-Id": "u1"})[0] == "MISS"
    assert stub.calls == 2
    # Another user with the same persona shares it (persona scope is the default).
    assert ask(client, stream=stream, **BEGINNER, **{"X-User-Id": "u2"})[:2] == ("HIT", first)
    # User scope: private to the user.
    user_scope = {**BEGINNER, "X-Cache-Scope": "user"}
    assert ask(client, stream=stream, **user_scope, **{"X-User-Id": "u1"})[0] == "MISS"
    assert ask(client, stream=stream, **user_scope, **{"X-User-Id": "u2"})[0] == "MISS"
    assert ask(client, stream=stream, **user_scope, **{"X-User-Id": "u2"})[0] == "HIT"
    calls = stub.calls
    # Another API key: another tenant, even for the very same request.
    other = any_sidecar.client(api_key=OTHER_API_KEY)
    assert ask(other, stream=stream, **BEGINNER, **{"X-User-Id": "u1"})[0] == "MISS"
    assert stub.calls == calls + 1
    assert stub.fake.requests[-1].headers["authorization"] == f"Bearer {OTHER_API_KEY}"


def test_stream_and_json_share_one_entry(sidecar: Sidecar, stub: Stub) -> None:
    client = sidecar.client()
    status, streamed, _ = ask(client, stream=True)
    assert status == "MISS"
    status, whole, _ = ask(client)
    assert (status, whole) == ("HIT", streamed)
    assert stub.calls == 1


def test_json_miss_replays_as_sse_with_usage(sidecar: Sidecar, stub: Stub) -> None:
    client = sidecar.client()
    miss = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    chunks = list(
        client.chat.completions.create(
            model="gpt-4o-mini",
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert stub.calls == 1
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == miss.choices[0].message.content
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.total_tokens == miss.usage.total_tokens  # type: ignore[union-attr]
    finish = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finish == ["stop"]


def test_usage_chunk_only_when_asked(sidecar: Sidecar, stub: Stub) -> None:
    client = sidecar.client()
    plain = list(
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
    )
    # The sidecar always asks upstream for usage (the ledger needs it) ...
    assert stub.fake.requests[-1].body["stream_options"] == {"include_usage": True}
    # ... and strips that chunk from a client that did not ask for it.
    assert all(chunk.choices for chunk in plain)
    asked = list(
        client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "another question"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert asked[-1].choices == [] and asked[-1].usage is not None


def test_cut_stream_is_not_stored(sidecar: Sidecar, stub: Stub) -> None:
    stub.fake.cut_stream_after = 3
    client = sidecar.client()
    with pytest.raises(openai.APIError):
        list(client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True))
    stub.fake.cut_stream_after = None
    assert ask(client, stream=True)[0] == "MISS"
    assert ask(client, stream=True)[0] == "HIT"


def test_completions_endpoint_both_ways(any_sidecar: Sidecar, stub: Stub) -> None:
    client = any_sidecar.client()
    first = client.completions.with_raw_response.create(
        model="gpt-3.5-turbo-instruct", prompt="Say hi"
    )
    assert first.headers["x-cache"] == "MISS"
    text = first.parse().choices[0].text
    streamed = client.completions.with_raw_response.create(
        model="gpt-3.5-turbo-instruct", prompt="Say hi", stream=True
    )
    assert streamed.headers["x-cache"] == "HIT"
    assert "".join(c.choices[0].text for c in streamed.parse() if c.choices) == text
    assert stub.calls == 1


def test_errors_pass_through_and_are_never_stored(sidecar: Sidecar, stub: Stub) -> None:
    client = sidecar.client()
    stub.fake.fail_next, stub.fake.fail_status = 1, 500
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    stub.fake.fail_next, stub.fake.fail_status, stub.fake.fail_retry_after = 1, 429, "7"
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert caught.value.response.headers["retry-after"] == "7"
    assert ask(client)[0] == "MISS"
    assert ask(client)[0] == "HIT"
    assert stub.calls == 3


async def test_async_sdk_and_stream(sidecar: Sidecar, stub: Stub) -> None:
    client = sidecar.aclient()
    miss = await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    stream = await client.chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True
    )
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == miss.choices[0].message.content
    assert stub.calls == 1
    await client.close()
