"""`POST /v1/messages` (Anthropic's Messages API) understood like chat (docs/design.md §11),
driven by the official `anthropic` SDK against a real sidecar in front of the stub upstream:
MISS then HIT with one upstream call, the same text streamed and not, stream and JSON
cross-served, tenants and personas, single-flight, upstream errors passed through uncached,
one ledger row per request, budgets, the sidecar's own errors in Anthropic's shape, and
ANTHROPIC_BASE_URL."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import anthropic
import pytest

from proxy.cache.messages_stream import MessageAssembly, MessageStream, replay_events
from proxy.cache.streams import Fed
from proxy.fake_upstream import FakeUpstream, start_fake_upstream
from proxy.handlers.semantic import calls_tools
from proxy.semantic.question import split_question
from proxy.sse import SseParser
from tests.fixtures.sidecar import API_KEY, OTHER_API_KEY, LoopThread, Sidecar, SidecarFactory, Stub
from tests.test_ledger_e2e import flush, ledger_of
from tests.test_semantic import ANCHOR, PARAPHRASE, wait_ready
from tests.test_single_flight import gathered

MODEL = "claude-haiku-4-5"
MAX_TOKENS = 9  # the stub writes this many words (stop_reason "max_tokens")
VERSION = "2023-06-01"
SYSTEM = "You are a patient tutor who explains every idea with one short example. " * 8


def client(sidecar: Sidecar, api_key: str = API_KEY, **headers: str) -> anthropic.Anthropic:
    """The SDK's base URL is the sidecar's root: it adds /v1/messages itself. The key goes in
    `x-api-key` (this SDK version sends `api_key=` as `Authorization: Bearer`, see `bearer`)."""
    return anthropic.Anthropic(
        base_url=sidecar.root,
        api_key=None,
        max_retries=0,
        default_headers={"x-api-key": api_key, **headers},
    )


def bearer(sidecar: Sidecar, api_key: str = API_KEY) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=sidecar.root, api_key=api_key, max_retries=0)


def aclient(sidecar: Sidecar) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(
        base_url=sidecar.root, api_key=None, max_retries=0, default_headers={"x-api-key": API_KEY}
    )


def asked(question: str) -> list[Any]:
    return [{"role": "user", "content": question}]


def ask(c: anthropic.Anthropic, question: str, **extra: Any) -> tuple[str, Any]:
    """(X-Cache, the Message) of a JSON request."""
    raw = c.messages.with_raw_response.create(
        model=MODEL, max_tokens=MAX_TOKENS, messages=asked(question), **extra
    )
    return raw.headers["x-cache"], raw.parse()


def ask_events(c: anthropic.Anthropic, question: str, **extra: Any) -> tuple[str, str, list[str]]:
    """(X-Cache, the text, the event types) of `messages.create(stream=True)`."""
    raw = c.messages.with_raw_response.create(
        model=MODEL, max_tokens=MAX_TOKENS, messages=asked(question), stream=True, **extra
    )
    text, kinds = "", []
    for event in raw.parse():
        kinds.append(event.type)
        if event.type == "content_block_delta" and event.delta.type == "text_delta":
            text += event.delta.text
    return raw.headers["x-cache"], text, kinds


def ask_helper(c: anthropic.Anthropic, question: str, **extra: Any) -> tuple[str, str, Any]:
    """(X-Cache, get_final_text, get_final_message) of `messages.stream(...)`."""
    with c.messages.stream(
        model=MODEL, max_tokens=MAX_TOKENS, messages=asked(question), **extra
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
        if any(block.type == "text" for block in final.content):
            assert stream.get_final_text() == text
        return stream.response.headers["x-cache"], text, final


def text_of(message: Any) -> str:
    return "".join(block.text for block in message.content if block.type == "text")


def messages_calls(stub: Stub) -> int:
    return stub.fake.calls["/v1/messages"]


def test_miss_then_hit_with_one_upstream_call_and_the_same_text_every_way(
    any_sidecar: Sidecar, stub: Stub
) -> None:
    c = client(any_sidecar)
    status, miss = ask(c, "What is a prime number?")
    assert status == "MISS" and miss.id.startswith("msg_") and miss.stop_reason == "max_tokens"
    status, hit = ask(c, "What is a prime number?")
    assert status == "HIT" and hit.id == miss.id and text_of(hit) == text_of(miss)
    assert hit.usage.output_tokens == MAX_TOKENS == miss.usage.output_tokens
    status, text, kinds = ask_events(c, "What is a prime number?")
    assert (status, text) == ("HIT", text_of(miss))
    # (the SDK drops `ping` events; the replay sends one, as the upstream does)
    assert kinds[:2] == ["message_start", "content_block_start"]
    assert kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    status, text, final = ask_helper(c, "What is a prime number?")
    assert (status, text, final.id, final.stop_reason) == (
        "HIT",
        text_of(miss),
        miss.id,
        "max_tokens",
    )
    assert final.usage.input_tokens == miss.usage.input_tokens
    assert messages_calls(stub) == 1


def test_a_streamed_miss_is_stored_whole_and_serves_json(any_sidecar: Sidecar, stub: Stub) -> None:
    c = client(any_sidecar)
    status, text, streamed = ask_helper(c, "Name three rivers in Africa.")
    assert status == "MISS" and len(text.split()) == MAX_TOKENS
    status, hit = ask(c, "Name three rivers in Africa.")
    assert status == "HIT" and text_of(hit) == text and hit.id == streamed.id
    assert hit.usage.model_dump() == streamed.usage.model_dump()
    assert ask_events(c, "Name three rivers in Africa.")[:2] == ("HIT", text)
    assert messages_calls(stub) == 1


def test_a_streamed_tool_use_round_trips(any_sidecar: Sidecar, stub: Stub) -> None:
    c = client(any_sidecar)
    tools: Any = [
        {
            "name": "get_weather",
            "description": "The weather in a city.",
            "input_schema": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                "required": ["city", "days"],
            },
        }
    ]
    extra: dict[str, Any] = {"tools": tools, "tool_choice": {"type": "any"}}
    status, _, streamed = ask_helper(c, "Weather in Paris?", **extra)
    assert status == "MISS" and streamed.stop_reason == "tool_use"
    call = streamed.content[0]
    assert (
        call.type == "tool_use"
        and call.name == "get_weather"
        and set(call.input) == {"city", "days"}
    )
    status, hit = ask(c, "Weather in Paris?", **extra)
    assert status == "HIT" and hit.content[0].input == call.input and hit.content[0].id == call.id
    _, _, replayed = ask_helper(c, "Weather in Paris?", **extra)
    assert replayed.content[0].input == call.input
    assert messages_calls(stub) == 1


def test_tenants_and_personas(sidecar: Sidecar, stub: Stub) -> None:
    question = "Why is the sky blue?"
    assert ask(client(sidecar), question)[0] == "MISS"
    assert ask(client(sidecar), question)[0] == "HIT"
    # x-api-key B is another tenant.
    assert ask(client(sidecar, OTHER_API_KEY), question)[0] == "MISS"
    # The same key sent as Authorization: Bearer is another credential, so another tenant.
    assert ask(bearer(sidecar), question)[0] == "MISS"
    assert ask(bearer(sidecar), question)[0] == "HIT"
    # Personas: another persona misses; the same persona from another user hits.
    beginner = {"X-Persona-Experience": "beginner"}
    assert ask(client(sidecar, **beginner, **{"X-User-Id": "u1"}), question)[0] == "MISS"
    assert ask(client(sidecar, **beginner, **{"X-User-Id": "u2"}), question)[0] == "HIT"
    expert = {"X-Persona-Experience": "expert", "X-User-Id": "u1"}
    assert ask(client(sidecar, **expert), question)[0] == "MISS"
    assert messages_calls(stub) == 5


def test_headers_upstream_and_anthropic_beta_in_the_key(sidecar: Sidecar, stub: Stub) -> None:
    question = "Define entropy."
    persona = {"X-Persona-Tone": "formal", "X-Cache-Scope": "persona"}
    c = client(sidecar, **persona)
    assert ask(c, question)[0] == "MISS"
    sent = stub.fake.requests[-1].headers
    assert sent["x-api-key"] == API_KEY and "authorization" not in sent
    assert sent["anthropic-version"] == c.default_headers["anthropic-version"]
    assert not [name for name in sent if name.startswith(("x-persona-", "x-cache-"))]
    # A beta changes what the upstream does: its own entry, and its header goes upstream.
    beta = {"anthropic-beta": "context-1m-2025-08-07"}
    assert ask(client(sidecar, **persona, **beta), question)[0] == "MISS"
    assert stub.fake.requests[-1].headers["anthropic-beta"] == beta["anthropic-beta"]
    assert ask(client(sidecar, **persona, **beta), question)[0] == "HIT"
    assert ask(client(sidecar, **persona), question)[0] == "HIT"
    assert messages_calls(stub) == 2


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
async def test_100_identical_misses_make_one_upstream_call(
    any_sidecar: Sidecar, stub: Stub, stream: bool
) -> None:
    c = aclient(any_sidecar)

    async def one() -> tuple[str, str]:
        kwargs: dict[str, Any] = {"model": MODEL, "max_tokens": MAX_TOKENS}
        if not stream:
            raw = await c.messages.with_raw_response.create(
                messages=asked("Tell a fact."), **kwargs
            )
            return raw.headers["x-cache"], text_of(await raw.parse())
        async with c.messages.stream(messages=asked("Tell a fact."), **kwargs) as s:
            return s.response.headers["x-cache"], await s.get_final_text()

    answers = await gathered(any_sidecar, stub, [one() for _ in range(100)])
    assert messages_calls(stub) == 1
    assert Counter(cache for cache, _ in answers) == {"MISS": 1, "COALESCED": 99}
    assert len({text for _, text in answers}) == 1
    status, hit = ask(client(any_sidecar), "Tell a fact.")
    assert status == "HIT" and text_of(hit) == answers[0][1]


def test_upstream_errors_pass_through_uncached(any_sidecar: Sidecar, stub: Stub) -> None:
    c = client(any_sidecar)
    for _ in range(2):
        with pytest.raises(anthropic.NotFoundError) as found:
            c.messages.create(model="claude-nope", max_tokens=5, messages=asked("hi"))
        assert found.value.body == {
            "type": "error",
            "error": {
                "type": "not_found_error",
                "message": "The model `claude-nope` does not exist or you do not have access "
                "to it.",
            },
        }
    assert messages_calls(stub) == 2  # never cached
    stub.fake.fail_next, stub.fake.fail_status = 1, 500
    with pytest.raises(anthropic.InternalServerError) as failed:
        ask(c, "Will this fail?")
    assert failed.value.body["error"]["type"] == "api_error"  # type: ignore[index]
    assert ask(c, "Will this fail?")[0] == "MISS"
    stub.fake.cut_stream_after = 3  # a cut stream stores nothing
    with pytest.raises(anthropic.APIError) as cut:
        ask_helper(c, "A cut stream?")
    assert "stream" in str(cut.value.message)
    stub.fake.cut_stream_after = None
    assert ask(c, "A cut stream?")[0] == "MISS"


def _pricing(tmp_path: Path) -> str:
    """A price table with the Claude model the stub serves."""
    path = tmp_path / "pricing.toml"
    path.write_text(
        f'[models."{MODEL}"]\ninput = 1.00\ncached_input = 0.10\noutput = 5.00\n'
        'taken = "2026-12-01"\n'
    )
    return str(path)


async def test_one_ledger_row_per_request_with_cache_tokens(
    make_sidecar: SidecarFactory, stub: Stub, loop_thread: LoopThread, tmp_path: Path
) -> None:
    sidecar = make_sidecar(PRICING_FILE=_pricing(tmp_path))
    c = client(sidecar)
    system: Any = [{"type": "text", "text": SYSTEM, "cache_control": {"type": "ephemeral"}}]
    users = {}
    for n, question in enumerate(("First question?", "Second question?", "First question?")):
        status, message = ask(c, question, system=system, extra_headers={"X-User-Id": f"u{n}"})
        users[f"u{n}"] = (status, message.usage)
    (s0, u0), (s1, u1), (s2, _) = users.values()
    assert (s0, s1, s2) == ("MISS", "MISS", "HIT")
    assert u0.cache_creation_input_tokens > 0 and u0.cache_read_input_tokens == 0
    assert u1.cache_read_input_tokens == u0.cache_creation_input_tokens > 0
    flush(loop_thread, sidecar)
    rows = {row["user_id"]: row for row in (await ledger_of(sidecar).rows_by_id()).values()}
    assert rows.keys() == users.keys()
    prices = sidecar.runtime.prices
    tenant = sidecar.runtime.keys.tenant_id(f"\nx-api-key:{API_KEY}")
    for uid, (status, usage) in users.items():
        row = rows[uid]
        read, written = usage.cache_read_input_tokens, usage.cache_creation_input_tokens
        prompt = usage.input_tokens + read + written
        assert (row["request_type"], row["model"], row["tenant"]) == ("messages", MODEL, tenant)
        assert (row["cache_status"], row["status"]) == (status, 200)
        assert (row["prompt_tokens"], row["completion_tokens"]) == (prompt, MAX_TOKENS)
        assert row["cached_tokens"] == read
        cost = prices.cost(MODEL, prompt, read, MAX_TOKENS)
        paid = status == "MISS"
        assert row["cost"] == pytest.approx(cost if paid else 0.0, abs=1e-15)
        assert row["saved_cost"] == pytest.approx(0.0 if paid else cost, abs=1e-15)
        assert cost > 0


def test_a_budget_refuses_before_the_upstream_call(
    make_sidecar: SidecarFactory, stub: Stub, tmp_path: Path
) -> None:
    sidecar = make_sidecar(PRICING_FILE=_pricing(tmp_path), BUDGET_TENANT_DAILY_USD="0.0001")
    c = client(sidecar)
    with pytest.raises(anthropic.RateLimitError) as refused:
        c.messages.create(model=MODEL, max_tokens=4096, messages=asked("A long essay, please."))
    assert messages_calls(stub) == 0
    body: Any = refused.value.body
    assert body["type"] == "error" and body["error"]["type"] == "rate_limit_error"
    assert "budget" in body["error"]["message"].lower()
    assert ask(c, "A short answer?")[0] == "MISS"  # a small request still fits


def test_the_sidecars_own_errors_are_anthropic_shaped(sidecar: Sidecar, stub: Stub) -> None:
    headers = {"x-api-key": API_KEY, "anthropic-version": VERSION}
    bad_json = sidecar.request("POST", "/v1/messages", b"{not json", headers)
    no_max = sidecar.request(
        "POST", "/v1/messages", {"model": MODEL, "messages": asked("hi")}, headers
    )
    bad_persona = sidecar.request(
        "POST",
        "/v1/messages",
        {"model": MODEL, "max_tokens": 5, "messages": asked("hi")},
        {**headers, "X-Persona-Tone": "sarcastic"},
    )
    for answer in (bad_json, no_max, bad_persona):
        assert answer.status == 400
        body = answer.json()
        assert set(body) == {"type", "error"} and body["type"] == "error"
        assert body["error"]["type"] == "invalid_request_error" and body["error"]["message"]
    assert "max_tokens" in no_max.json()["error"]["message"]
    assert "X-Persona-Tone" in bad_persona.json()["error"]["message"]
    assert messages_calls(stub) == 0
    # Chat's errors keep OpenAI's shape.
    chat = sidecar.request("POST", "/v1/chat/completions", b"{not json")
    assert chat.status == 400 and chat.json()["error"]["type"] == "invalid_request_error"
    assert "type" not in chat.json()


def test_managed_mode_refusal_is_anthropic_shaped(make_sidecar: SidecarFactory) -> None:
    sidecar = make_sidecar(UPSTREAM_API_KEY="sk-upstream", SIDECAR_KEYS="sk-side=team")
    with pytest.raises(anthropic.AuthenticationError) as refused:
        anthropic.Anthropic(
            base_url=sidecar.root, auth_token="sk-wrong", max_retries=0
        ).messages.create(model=MODEL, max_tokens=5, messages=asked("hi"))
    assert refused.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
    assert refused.value.response.headers.get("x-request-id")


def test_anthropic_base_url_takes_messages_and_chat_stays(
    make_sidecar: SidecarFactory, stub: Stub, loop_thread: LoopThread
) -> None:
    second = FakeUpstream(record_credentials=True)
    runner, url = loop_thread.run(start_fake_upstream(second))
    try:
        sidecar = make_sidecar(ANTHROPIC_BASE_URL=url.removesuffix("/v1"))
        assert ask(client(sidecar), "Routed where?")[0] == "MISS"
        assert ask_helper(client(sidecar), "And streamed?")[0] == "MISS"
        assert second.calls["/v1/messages"] == 2 and messages_calls(stub) == 0
        chat = sidecar.client().chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
        )
        assert chat.choices[0].message.content
        assert stub.fake.calls["/v1/chat/completions"] == 1
        assert "/v1/chat/completions" not in second.calls
        assert "anthropic" in sidecar.runtime.upstream.breakers.breakers
    finally:
        loop_thread.run(runner.cleanup())


# The stream format on its own: what a stored message replays as, read back, is that message.
MESSAGE: dict[str, Any] = {
    "id": "msg_01",
    "type": "message",
    "role": "assistant",
    "model": MODEL,
    "content": [
        {"type": "thinking", "thinking": "Let me see.", "signature": "sig"},
        {"type": "text", "text": "Hello there."},
        {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {"a": [1, {"b": None}]}},
    ],
    "stop_reason": "tool_use",
    "stop_sequence": None,
    "usage": {
        "input_tokens": 5,
        "output_tokens": 7,
        "cache_read_input_tokens": 3,
        "cache_creation_input_tokens": 0,
    },
}


def test_replay_reads_back_as_the_stored_message() -> None:
    stream = MessageStream()
    assert stream.owns(MESSAGE) and not stream.owns({"object": "chat.completion"})
    assembly, fed = MessageAssembly(), []
    for event in SseParser().feed(stream.replay(MESSAGE, include_usage=False)):
        assert event.raw.startswith(b"event: ")
        assert event.data is not None
        fed.append(assembly.feed(event.data))
    assert fed[-1] is Fed.DONE and Fed.BROKEN not in fed
    assert assembly.whole() == MESSAGE
    assert len(replay_events(MESSAGE)) == 2 + 4 + 3 + 3 + 2  # thinking has two deltas


def test_an_error_event_or_a_missing_stop_stores_nothing() -> None:
    events = [e for e in SseParser().feed(MessageStream().replay(MESSAGE, False)) if e.data]
    cut = MessageAssembly()
    for event in events[:-1]:
        assert event.data is not None
        cut.feed(event.data)
    assert cut.whole() is None
    broken = MessageAssembly()
    assert broken.feed(b'{"type":"error","error":{"type":"overloaded_error"}}') is Fed.BROKEN
    assert broken.whole() is None


def test_validate_needs_a_whole_message() -> None:
    from proxy.handlers.messages import validate_message

    usage = validate_message(
        b'{"type":"message","content":[],"stop_reason":"end_turn","usage":{"input_tokens":4,'
        b'"output_tokens":2,"cache_read_input_tokens":10,"cache_creation_input_tokens":6}}'
    )
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens) == (20, 2, 10)
    assert usage.cache_write_tokens == 6
    assert validate_message(b'{"type":"message","content":[],"stop_reason":null}') is None
    assert validate_message(b'{"type":"error","content":[],"stop_reason":"end_turn"}') is None
    assert validate_message(b'{"type":"message","stop_reason":"end_turn"}') is None


def test_too_large_and_breaker_refusals_keep_status_and_retry_after(
    make_sidecar: SidecarFactory, stub: Stub
) -> None:
    sidecar = make_sidecar(MAX_BODY_MB="0.01", BREAKER_FAIL_MAX="1", BREAKER_RESET_S="60")
    headers = {"x-api-key": API_KEY}
    big = {"model": MODEL, "max_tokens": 5, "messages": asked("word " * 5000)}
    too_large = sidecar.request("POST", "/v1/messages", big, headers)
    assert too_large.status == 413
    assert too_large.json()["error"]["type"] == "request_too_large"
    stub.fake.fail_next, stub.fake.fail_status = 1, 500
    small = {"model": MODEL, "max_tokens": 5, "messages": asked("hi")}
    assert sidecar.request("POST", "/v1/messages", small, headers).status == 500  # relayed
    refused = sidecar.request("POST", "/v1/messages", small, headers)
    assert refused.status == 503 and int(refused.headers["retry-after"]) > 0
    assert refused.json() == {
        "type": "error",
        "error": {"type": "overloaded_error", "message": refused.json()["error"]["message"]},
    }
    assert "upstream is failing" in refused.json()["error"]["message"]
    assert messages_calls(stub) == 1


def test_a_paraphrase_hits_semantically_and_tool_use_is_never_served(
    make_sidecar: SidecarFactory, stub: Stub
) -> None:
    sidecar = wait_ready(make_sidecar(SEMANTIC_CACHE="on"))
    c = client(sidecar)
    status, first = ask(c, ANCHOR, system="You are a botanist.")
    assert status == "MISS"
    calls = stub.calls
    raw = c.messages.with_raw_response.create(
        model=MODEL, max_tokens=MAX_TOKENS, messages=asked(PARAPHRASE), system="You are a botanist."
    )
    assert (raw.headers["x-cache"], raw.headers["x-cache-match"]) == ("HIT", "semantic")
    assert text_of(raw.parse()) == text_of(first) and stub.calls == calls
    # Another system prompt is another partition.
    assert ask(c, PARAPHRASE, system="You are a chemist.")[0] == "MISS"
    assert split_question({"messages": asked(PARAPHRASE)}) is not None
    assert calls_tools(b'{"content":[{"type":"tool_use","id":"toolu_1"}]}')
