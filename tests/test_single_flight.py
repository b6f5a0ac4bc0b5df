"""Single-flight in one process (issue 3, item 1): identical concurrent misses share one upstream
call, JSON or SSE, however the waiters arrive and whoever leaves.

The stub upstream is held (`hang`) until every client is waiting on the flight, so "concurrent"
never depends on timing; the counts and X-Cache values are exact.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec
import openai
import pytest

from proxy.dispatch.flight import Flight
from tests.fixtures.sidecar import API_KEY, Sidecar, Stub

QUESTION = "Explain single-flight request coalescing to a new engineer."
WAIT_S = 10.0


@dataclass
class Asked:
    """One client's view of one chat request."""

    cache: str
    text: str
    usage_chunk: bool = False  # a streamed answer ended with the usage-only chunk
    first_chunk_before_end: bool | None = None  # streamed: live, not a replay after the end


def messages(question: str = QUESTION) -> Any:
    return [{"role": "user", "content": question}]


async def ask(
    client: openai.AsyncOpenAI,
    *,
    stream: bool = False,
    include_usage: bool = False,
    question: str = QUESTION,
    headers: dict[str, str] | None = None,
    flight: Callable[[], Flight | None] | None = None,
) -> Asked:
    """One chat request. With `flight`, records whether the first streamed chunk arrived while
    that flight was still running."""
    if not stream:
        whole = await client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=messages(question), extra_headers=headers
        )
        completion = whole.parse()
        return Asked(whole.headers["x-cache"], completion.choices[0].message.content or "")
    options: Any = {"include_usage": True} if include_usage else openai.omit
    async with client.chat.completions.with_streaming_response.create(
        model="gpt-4o-mini",
        messages=messages(question),
        stream=True,
        stream_options=options,
        extra_headers=headers,
    ) as raw:
        asked = Asked(raw.headers["x-cache"], "")
        async for chunk in await raw.parse():
            if asked.first_chunk_before_end is None and flight is not None:
                running = flight()
                asked.first_chunk_before_end = running is not None and not running.result.done()
            if chunk.choices:
                asked.text += chunk.choices[0].delta.content or ""
            elif chunk.usage is not None:
                asked.usage_chunk = True
        return asked


async def until(ready: Callable[[], bool], what: str, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not ready():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout_s} s: {what}")
        await asyncio.sleep(0.005)


async def until_count(read: Callable[[], int], count: int, what: str) -> None:
    await until(lambda: read() == count, f"{what} == {count}")


def waiting(sidecar: Sidecar) -> int:
    """Clients waiting on (or reading) a flight of `sidecar`, all flights together."""
    flights = list(sidecar.runtime.flights.flights.values())
    return sum(len(flight.watchers) for flight in flights)


def the_flight(sidecar: Sidecar) -> Flight | None:
    flights = list(sidecar.runtime.flights.flights.values())
    return flights[0] if flights else None


async def gathered(sidecar: Sidecar, stub: Stub, asks: list[Any]) -> list[Any]:
    """Runs `asks` with the stub held: the first alone until it leads a flight that reached the
    stub, then the others at once; the stub answers when all of them wait on that flight."""
    stub.fake.hang = True
    tasks = [asyncio.ensure_future(asks[0])]
    await until(lambda: waiting(sidecar) == 1 and stub.fake.in_flight == 1, "a leader")
    tasks += [asyncio.ensure_future(a) for a in asks[1:]]
    await until(lambda: waiting(sidecar) == len(asks), f"{len(asks)} clients on the flight")
    stub.fake.hang = False
    return list(await asyncio.wait_for(asyncio.gather(*tasks), WAIT_S))


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
async def test_100_identical_misses_make_one_upstream_call(
    any_sidecar: Sidecar, stub: Stub, stream: bool
) -> None:
    client = any_sidecar.aclient()
    answers: list[Asked] = await gathered(
        any_sidecar, stub, [ask(client, stream=stream) for _ in range(100)]
    )
    assert stub.calls == 1
    assert Counter(a.cache for a in answers) == {"MISS": 1, "COALESCED": 99}
    texts = {a.text for a in answers}
    assert len(texts) == 1
    # Whole: the JSON answer stored by the flight is the very text every client got.
    hit = await ask(client)
    assert (hit.cache, {hit.text}) == ("HIT", texts)
    assert len(hit.text.split()) == 24  # the stub's full default answer
    assert stub.calls == 1


async def test_late_joiners_get_the_stream_from_the_first_chunk(
    any_sidecar: Sidecar, stub: Stub
) -> None:
    stub.fake.chunk_delay_ms = 30  # 27 events: the stream lasts ~0.8 s
    client = any_sidecar.aclient()
    seen = {"chunks": 0}
    joined_after: list[int] = []

    async def leader() -> Asked:
        asked = Asked("", "")
        async with client.chat.completions.with_streaming_response.create(
            model="gpt-4o-mini", messages=messages(), stream=True
        ) as raw:
            asked.cache = raw.headers["x-cache"]
            async for chunk in await raw.parse():
                seen["chunks"] += 1
                if chunk.choices:
                    asked.text += chunk.choices[0].delta.content or ""
        return asked

    async def joiner(after: int) -> Asked:
        await until(lambda: seen["chunks"] >= after, f"the leader read {after} chunks")
        flight = the_flight(any_sidecar)
        assert flight is not None and len(flight.events) >= after
        joined_after.append(len(flight.events))
        return await ask(client, stream=True, flight=lambda: flight)

    first, *late = await asyncio.wait_for(asyncio.gather(leader(), joiner(3), joiner(8)), WAIT_S)
    assert stub.calls == 1
    assert first.cache == "MISS"
    assert len(first.text.split()) == 24
    for asked in late:
        assert asked.cache == "COALESCED"
        assert asked.text == first.text  # what was sent before they joined, then the rest
        assert asked.first_chunk_before_end  # live: not a replay of the stored answer
    assert min(joined_after) >= 3
    hit = await ask(client)
    assert (hit.cache, hit.text) == ("HIT", first.text)


@pytest.mark.parametrize("leader_streams", [True, False], ids=["sse-leader", "json-leader"])
async def test_mixed_waiters_and_usage_chunks_share_one_flight(
    any_sidecar: Sidecar, stub: Stub, leader_streams: bool
) -> None:
    client = any_sidecar.aclient()
    first = ask(client, stream=leader_streams)
    json_1, json_2 = ask(client), ask(client)
    sse_usage = [ask(client, stream=True, include_usage=True) for _ in range(3)]
    sse_plain = [ask(client, stream=True) for _ in range(3)]
    answers: list[Asked] = await gathered(
        any_sidecar, stub, [first, json_1, json_2, *sse_usage, *sse_plain]
    )
    assert stub.calls == 1
    # The upstream was asked for the usage chunk whenever it streamed (the ledger needs it).
    sent = stub.fake.requests[-1].body
    assert isinstance(sent, dict)
    assert sent.get("stream", False) is leader_streams
    if leader_streams:
        assert sent["stream_options"] == {"include_usage": True}
    assert answers[0].cache == "MISS"
    assert {a.cache for a in answers[1:]} == {"COALESCED"}
    assert len({a.text for a in answers}) == 1
    assert [a.usage_chunk for a in answers[3:]] == [True] * 3 + [False] * 3


async def test_a_leader_that_leaves_mid_stream_cancels_nothing(
    any_sidecar: Sidecar, stub: Stub
) -> None:
    stub.fake.chunk_delay_ms = 10
    stub.fake.hang = True
    host, port = any_sidecar.root.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    body = msgspec.json.encode({"model": "gpt-4o-mini", "messages": messages(), "stream": True})
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: sidecar\r\n"
        + f"Authorization: Bearer {API_KEY}\r\nContent-Type: application/json\r\n".encode()
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    await writer.drain()
    await until(lambda: waiting(any_sidecar) == 1, "the raw leader waits on its flight")
    client = any_sidecar.aclient()
    followers = [asyncio.ensure_future(ask(client, stream=i % 2 == 0)) for i in range(6)]
    await until(lambda: waiting(any_sidecar) == 7, "six followers joined")
    stub.fake.hang = False

    received = b""
    while b"data: " not in received:  # the first event reached the leader ...
        received += await asyncio.wait_for(reader.read(256), WAIT_S)
    assert b"X-Cache: MISS" in received
    writer.close()  # ... and then it left
    await writer.wait_closed()

    answers = await asyncio.wait_for(asyncio.gather(*followers), WAIT_S)
    assert {a.cache for a in answers} == {"COALESCED"}
    assert len({a.text for a in answers}) == 1
    assert len(answers[0].text.split()) == 24
    assert stub.calls == 1
    hit = await ask(client)
    assert (hit.cache, hit.text) == ("HIT", answers[0].text)  # the flight stored it
    assert stub.calls == 1


async def test_an_upstream_failure_reaches_every_waiter_and_is_not_stored(
    any_sidecar: Sidecar, stub: Stub
) -> None:
    stub.fake.fail_next, stub.fake.fail_status = 1, 500
    client = any_sidecar.aclient()

    async def failed(stream: bool) -> openai.APIStatusError:
        with pytest.raises(openai.InternalServerError) as caught:
            await ask(client, stream=stream)
        return caught.value

    errors: list[openai.APIStatusError] = await gathered(
        any_sidecar, stub, [failed(stream=i % 2 == 1) for i in range(20)]
    )
    assert stub.calls == 1
    assert {e.status_code for e in errors} == {500}
    assert len({e.message for e in errors}) == 1
    assert "told to fail with 500" in errors[0].message
    # Nothing was stored: the next request is a miss and reaches the upstream.
    again = await ask(client)
    assert again.cache == "MISS"
    assert stub.calls == 2


async def test_no_cache_and_no_store_never_share_a_flight(sidecar: Sidecar, stub: Stub) -> None:
    client = sidecar.aclient()
    no_cache = {"Cache-Control": "no-cache"}
    no_store = {"Cache-Control": "no-store"}
    stub.fake.hang = True
    asks = [
        (ask(client, headers=no_cache), 1),  # flies alone: nobody may join it ...
        (ask(client), 2),  # ... so this one leads a flight of its own
        (ask(client, headers=no_store), 3),
        (ask(client, headers=no_cache, stream=True), 4),
        (ask(client), 4),  # joins the second one's flight
    ]
    tasks = []
    for number, (asked, upstream_calls) in enumerate(asks, 1):
        tasks.append(asyncio.ensure_future(asked))
        await until_count(lambda: stub.fake.total_calls, upstream_calls, "upstream calls")
        if number == len(asks):
            await until(lambda: waiting(sidecar) == 2, "a follower on the shared flight")
    stub.fake.hang = False
    answers: list[Asked] = await asyncio.wait_for(asyncio.gather(*tasks), WAIT_S)
    assert stub.calls == 4
    assert [a.cache for a in answers] == ["MISS", "MISS", "BYPASS", "MISS", "COALESCED"]
    assert len({a.text for a in answers}) == 1  # same request, same deterministic answer


async def test_a_stream_cut_mid_way_fails_every_waiter_and_is_not_stored(
    any_sidecar: Sidecar, stub: Stub
) -> None:
    stub.fake.cut_stream_after = 5
    client = any_sidecar.aclient()

    async def failed(stream: bool) -> openai.APIError:
        with pytest.raises(openai.APIError) as caught:
            await ask(client, stream=stream)
        return caught.value

    errors: list[openai.APIError] = await gathered(
        any_sidecar, stub, [failed(stream=i % 3 != 1) for i in range(12)]
    )
    assert stub.calls == 1
    streamed, whole = errors[::3] + errors[2::3], errors[1::3]
    # Readers of the live stream got its first events, then the sidecar's error event ...
    assert {type(e) for e in streamed} == {openai.APIError}
    assert {e.code for e in streamed} == {"upstream_stream_failed"}
    # ... and the waiters for a whole answer the same error as a 502.
    assert len(whole) == 4
    for error in whole:
        assert isinstance(error, openai.InternalServerError)
        assert (error.status_code, error.code) == (502, "upstream_stream_failed")
    stub.fake.cut_stream_after = None
    assert (await ask(client, stream=True)).cache == "MISS"  # nothing was stored
    assert stub.calls == 2
