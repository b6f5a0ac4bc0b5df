"""`POST /v1/responses` through the sidecar with the official openai SDK (issue 14, item 1;
docs/design.md §11): cached like chat, JSON and SSE either way, chains kept apart, background
requests bypassed, one ledger row per request, budgets before the upstream call."""

from __future__ import annotations

from collections import Counter
from typing import Any

import msgspec
import openai
import pytest

from proxy.cache.responses_stream import ResponsesAssembly, ResponsesStream, replay_events
from proxy.cache.streams import Fed
from proxy.handlers.responses import validate_response
from proxy.semantic.question import split_question
from tests.fixtures.sidecar import OTHER_API_KEY, LoopThread, Sidecar, SidecarFactory, Stub
from tests.test_ledger_e2e import flush, ledger_of
from tests.test_semantic import ANCHOR, PARAPHRASE, wait_ready
from tests.test_single_flight import gathered

MODEL = "gpt-4o-mini"
QUESTION = "Explain photosynthesis in one paragraph."
BEGINNER = {"X-Persona-Experience": "beginner"}
EXPERT = {"X-Persona-Experience": "expert"}


def create(
    client: openai.OpenAI, *, headers: dict[str, str] | None = None, **body: Any
) -> tuple[str, Any]:
    """(X-Cache, the response) of one `stream: false` request."""
    body = {"model": MODEL, "input": QUESTION, **body}
    raw = client.responses.with_raw_response.create(**body, extra_headers=headers)
    return raw.headers["x-cache"], raw.parse()


def create_streamed(
    client: openai.OpenAI, *, headers: dict[str, str] | None = None, **body: Any
) -> tuple[str, str, Any]:
    """(X-Cache, the text of its deltas, the response of `response.completed`)."""
    body = {"model": MODEL, "input": QUESTION, **body}
    with client.responses.with_streaming_response.create(
        **body, stream=True, extra_headers=headers
    ) as raw:
        deltas, completed = [], None
        numbers = []
        for event in raw.parse():
            numbers.append(event.sequence_number)
            if event.type == "response.output_text.delta":
                deltas.append(event.delta)
            elif event.type == "response.completed":
                completed = event.response
        assert numbers == list(range(len(numbers)))
        return raw.headers["x-cache"], "".join(deltas), completed


async def acreate(client: openai.AsyncOpenAI, stream: bool) -> tuple[str, str]:
    if not stream:
        raw = await client.responses.with_raw_response.create(model=MODEL, input=QUESTION)
        return raw.headers["x-cache"], raw.parse().output_text
    async with client.responses.with_streaming_response.create(
        model=MODEL, input=QUESTION, stream=True
    ) as streamed:
        events = await streamed.parse()
        text = "".join([e.delta async for e in events if e.type == "response.output_text.delta"])
        return streamed.headers["x-cache"], text


def test_miss_then_hit_with_the_same_text_every_way(any_sidecar: Sidecar, stub: Stub) -> None:
    client = any_sidecar.client()
    status, first = create(client)
    assert status == "MISS" and stub.calls == 1
    assert first.id.startswith("resp_") and first.status == "completed"
    text = first.output_text
    assert len(text.split()) == 24

    status, again = create(client)
    assert (status, again.id, again.output_text) == ("HIT", first.id, text)
    status, streamed, completed = create_streamed(client)
    assert (status, streamed, completed.id, completed.output_text) == ("HIT", text, first.id, text)
    with client.responses.stream(model=MODEL, input=QUESTION) as stream:
        deltas = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
        final = stream.get_final_response()
    assert (deltas, final.output_text, final.id) == (text, text, first.id)
    assert final.usage is not None and final.usage.output_tokens == 24
    assert stub.calls == 1


def test_a_streamed_miss_is_stored_and_served_as_json(any_sidecar: Sidecar, stub: Stub) -> None:
    client = any_sidecar.client()
    status, text, completed = create_streamed(client, instructions="Be brief.")
    assert status == "MISS" and stub.calls == 1
    assert text == completed.output_text and len(text.split()) == 24
    status, whole = create(client, instructions="Be brief.")
    assert (status, whole.id, whole.output_text) == ("HIT", completed.id, text)
    assert whole.usage.input_tokens == completed.usage.input_tokens
    # A reasoning model's stream: its reasoning item and reasoning tokens survive the replay.
    status, text, completed = create_streamed(client, model="o4-mini")
    assert status == "MISS" and completed.usage.output_tokens_details.reasoning_tokens == 48
    status, again, replayed = create_streamed(client, model="o4-mini")
    assert (status, again) == ("HIT", text)
    assert [item.type for item in replayed.output] == ["reasoning", "message"]
    assert stub.calls == 2


def test_persona_and_tenant_rules(any_sidecar: Sidecar, stub: Stub) -> None:
    client = any_sidecar.client()
    u1, u2 = {"X-User-Id": "u1"}, {"X-User-Id": "u2"}
    status, first = create(client, headers={**BEGINNER, **u1})
    assert status == "MISS"
    assert create(client, headers={**EXPERT, **u1})[0] == "MISS"
    status, shared = create(client, headers={**BEGINNER, **u2})
    assert (status, shared.output_text) == ("HIT", first.output_text)
    user_scope = {**BEGINNER, "X-Cache-Scope": "user"}
    assert create(client, headers={**user_scope, **u1})[0] == "MISS"
    assert create(client, headers=user_scope, safety_identifier="u2")[0] == "MISS"
    assert create(client, headers={**user_scope, **u2})[0] == "HIT"  # the body's id is u2's
    other = any_sidecar.client(api_key=OTHER_API_KEY)
    assert create(other, headers={**BEGINNER, **u1})[0] == "MISS"
    assert stub.calls == 5


def test_previous_response_id_chains_never_cross(any_sidecar: Sidecar, stub: Stub) -> None:
    client = any_sidecar.client()
    _, a = create(client, input="Start a story.")
    _, b = create(client, input="Start a poem.")
    status, in_a = create(client, input="Go on.", previous_response_id=a.id)
    assert status == "MISS"
    status, in_b = create(client, input="Go on.", previous_response_id=b.id)
    assert status == "MISS" and in_b.output_text != in_a.output_text
    sent = stub.fake.requests[-1].body
    assert isinstance(sent, dict) and sent["previous_response_id"] == b.id
    status, again = create(client, input="Go on.", previous_response_id=a.id)
    assert (status, again.output_text) == ("HIT", in_a.output_text)
    other = any_sidecar.client(api_key=OTHER_API_KEY)
    assert create(other, input="Go on.", previous_response_id=a.id)[0] == "MISS"
    assert create(client, input="Go on.", conversation="conv_1")[0] == "MISS"
    assert create(client, input="Go on.", conversation="conv_2")[0] == "MISS"
    assert stub.calls == 7


def test_background_bypasses_and_the_key_rules(any_sidecar: Sidecar, stub: Stub) -> None:
    client = any_sidecar.client()
    for _ in range(2):
        status, queued = create(client, background=True)
        assert (status, queued.status) == ("BYPASS", "queued")
    assert stub.calls == 2
    assert create(client)[0] == "MISS"  # the background answers stored nothing
    assert create(client, store=True)[0] == "HIT"  # `store` defaults to true
    assert create(client, store=False)[0] == "MISS"  # the upstream kept no copy of that one
    assert create(client, metadata={"run": "7"}, prompt_cache_key="k")[0] == "HIT"
    # One plain user message is the string input it says; any other field of it counts.
    message = {"role": "user", "content": QUESTION}
    assert create(client, input=[message])[0] == "HIT"
    assert create(client, input=[{**message, "type": "message"}])[0] == "HIT"
    assert create(client, input=[{**message, "role": "developer"}])[0] == "MISS"
    assert stub.calls == 5


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
async def test_100_identical_misses_make_one_upstream_call(
    any_sidecar: Sidecar, stub: Stub, stream: bool
) -> None:
    client = any_sidecar.aclient()
    answers = await gathered(any_sidecar, stub, [acreate(client, stream) for _ in range(100)])
    assert stub.calls == 1
    assert Counter(cache for cache, _ in answers) == {"MISS": 1, "COALESCED": 99}
    assert len({text for _, text in answers}) == 1
    assert (await acreate(client, not stream))[0] == "HIT"
    assert stub.calls == 1


def test_upstream_errors_pass_through_uncached(any_sidecar: Sidecar, stub: Stub) -> None:
    client = any_sidecar.client()
    for calls in (1, 2):
        with pytest.raises(openai.NotFoundError) as caught:
            create(client, model="no-such-model")
        assert caught.value.code == "model_not_found"
        assert stub.calls == calls
    # A stream cut half way: the client sees an error, nothing is stored.
    stub.fake.cut_stream_after = 4
    with pytest.raises(openai.APIError):
        create_streamed(client)
    stub.fake.cut_stream_after = None
    assert create_streamed(client)[0] == "MISS"
    assert stub.calls == 4


def test_other_responses_routes_pass_through(sidecar: Sidecar, stub: Stub) -> None:
    client = sidecar.client()
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve("resp_123")
    with pytest.raises(openai.NotFoundError):
        client.responses.delete("resp_123")
    seen = [(r.method, r.path) for r in stub.fake.requests]
    assert seen == [("GET", "/v1/responses/resp_123"), ("DELETE", "/v1/responses/resp_123")]


def test_one_ledger_row_per_request_with_its_tokens(
    make_sidecar: SidecarFactory, stub: Stub, loop_thread: LoopThread
) -> None:
    sidecar = make_sidecar()
    client = sidecar.client()
    _, miss = create(client, model="o4-mini", headers={"X-User-Id": "u1"})
    assert create(client, model="o4-mini", headers={"X-User-Id": "u2"})[0] == "HIT"
    usage = miss.usage
    assert usage.output_tokens_details.reasoning_tokens > 0
    flush(loop_thread, sidecar)
    rows = list(loop_thread.run(ledger_of(sidecar).rows_by_id()).values())
    assert len(rows) == 2
    by_user = {row["user_id"]: row for row in rows}
    cost = sidecar.runtime.prices.cost("o4-mini", usage.input_tokens, 0, usage.output_tokens)
    assert cost > 0
    for uid, status in (("u1", "MISS"), ("u2", "HIT")):
        row = by_user[uid]
        assert (row["request_type"], row["model"], row["cache_status"]) == (
            "responses", "o4-mini", status,
        )  # fmt: skip
        assert (row["prompt_tokens"], row["completion_tokens"]) == (
            usage.input_tokens, usage.output_tokens,
        )  # fmt: skip
    assert by_user["u1"]["cost"] == pytest.approx(cost)
    assert (by_user["u2"]["cost"], by_user["u2"]["saved_cost"]) == (0, pytest.approx(cost))


def test_a_budget_refuses_before_the_upstream_call(
    make_sidecar: SidecarFactory, stub: Stub
) -> None:
    sidecar = make_sidecar(BUDGET_TENANT_DAILY_USD="0.0000001")
    with pytest.raises(openai.RateLimitError) as caught:
        create(sidecar.client(), max_output_tokens=4000)
    assert caught.value.code == "budget_exceeded"
    assert stub.calls == 0


def test_a_paraphrase_hits_semantically_within_its_chain(
    make_sidecar: SidecarFactory, stub: Stub
) -> None:
    sidecar = wait_ready(make_sidecar(SEMANTIC_CACHE="on"))
    client = sidecar.client()
    status, first = create(client, input=ANCHOR)
    assert status == "MISS"
    calls = stub.calls
    raw = client.responses.with_raw_response.create(model=MODEL, input=PARAPHRASE)
    assert (raw.headers["x-cache"], raw.headers["x-cache-match"]) == ("HIT", "semantic")
    assert raw.parse().output_text == first.output_text
    status, text, _ = create_streamed(client, input=[{"role": "user", "content": PARAPHRASE}])
    assert (status, text) == ("HIT", first.output_text)
    assert stub.calls == calls
    # Another chain is another partition: the paraphrase is asked upstream.
    chained = create(client, input=PARAPHRASE, previous_response_id=first.id)
    assert chained[0] == "MISS"


def test_a_responses_question_is_its_last_user_text() -> None:
    body: dict[str, Any] = {"model": MODEL, "input": "Why is the sky blue?", "instructions": "x"}
    question = split_question(body)
    assert question is not None and question.text == "Why is the sky blue?"
    assert question.rest["input"] == [{"role": "user"}] and question.rest["instructions"] == "x"
    parts = [{"type": "input_text", "text": "Why"}, {"type": "input_text", "text": "blue?"}]
    listed = split_question({**body, "input": [{"role": "user", "content": parts}]})
    assert listed is not None and listed.text == "Why\nblue?"
    image = [*parts, {"type": "input_image", "image_url": "https://example.com/a.png"}]
    assert split_question({**body, "input": [{"role": "user", "content": image}]}) is None
    assert split_question({**body, "input": [{"role": "assistant", "content": "Hi"}]}) is None


ANSWER: dict[str, Any] = {
    "id": "resp_1",
    "object": "response",
    "status": "completed",
    "model": MODEL,
    "output": [
        {"id": "rs_1", "type": "reasoning", "summary": []},
        {
            "id": "msg_1",
            "type": "message",
            "status": "completed",
            "role": "assistant",
            "content": [
                {"type": "output_text", "text": "Hello there.", "annotations": []},
                {"type": "refusal", "refusal": "No."},
            ],
        },
    ],
    "usage": {
        "input_tokens": 9,
        "input_tokens_details": {"cached_tokens": 4},
        "output_tokens": 7,
        "output_tokens_details": {"reasoning_tokens": 5},
        "total_tokens": 16,
    },
}


def feed_all(events: list[dict[str, Any]]) -> tuple[list[Fed], dict[str, Any] | None]:
    assembly = ResponsesAssembly()
    fed = [assembly.feed(msgspec.json.encode(event)) for event in events]
    return fed, assembly.whole()


def test_a_replayed_answer_assembles_back_to_itself() -> None:
    events = replay_events(ANSWER)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert events[0]["response"]["output"] == [] and events[0]["response"]["id"] == "resp_1"
    fed, whole = feed_all(events)
    assert fed[-1] is Fed.DONE and whole == ANSWER
    assert ResponsesStream().replay(ANSWER, False).startswith(b"event: response.created\ndata: ")
    usage = validate_response(msgspec.json.encode(ANSWER))
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens) == (9, 7)
    assert (usage.cached_tokens, usage.reasoning_tokens) == (4, 5)


@pytest.mark.parametrize("ending", ["response.failed", "response.incomplete", "error", None])
def test_a_failed_or_unfinished_stream_is_not_whole(ending: str | None) -> None:
    events = replay_events(ANSWER)[:-1]
    if ending is not None:
        events.append({"type": ending, "sequence_number": len(events), "response": ANSWER})
    assert feed_all(events)[1] is None
    not_whole = [{**ANSWER, "status": "incomplete"}, {**ANSWER, "output": []}, {"error": {}}]
    assert [validate_response(msgspec.json.encode(a)) for a in not_whole] == [None] * 3
