"""The ledger end to end (issue 4): a real sidecar in front of the stub upstream, driven by the
openai SDK, writing to PostgreSQL or to the embedded SQLite file. Every understood request is
one row with the stub's tokens, the price table's cost and the savings of hits; the hourly
roll-up equals the rows summed; a budget stops the request that would cross it. Faults (the
database stopped or down, SIGTERM under load) are in tests/test_ledger_faults.py."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

import openai
import pytest

from proxy.fake_upstream.content import chat_prompt_tokens
from tests.budget_support import Receiver
from tests.fixtures.sidecar import API_KEY, OTHER_API_KEY, LoopThread, Sidecar, SidecarFactory
from tests.fixtures.sidecar import Stub as StubServer
from tests.ledger_db import LedgerDb, assert_rollup_matches
from tests.test_single_flight import gathered

CHAT_MODEL = "gpt-4o-mini"
EMBED_MODEL = "text-embedding-3-small"
MAX_TOKENS = 7  # the stub writes exactly this many completion tokens


@dataclass
class Expect:
    """What one request's row must say."""

    request_type: str
    model: str
    cache_status: str
    prompt: int = 0
    completion: int = 0
    cost: float = 0.0
    saved: float = 0.0
    status: int = 200
    tenant_key: str = API_KEY
    persona: dict[str, str] | None = None


def ledger_of(sidecar: Sidecar) -> LedgerDb:
    ledger = sidecar.runtime.settings.ledger
    if ledger.database_url:
        return LedgerDb("postgres", ledger.database_url)
    return LedgerDb("sqlite", ledger.path)


def flush(loop_thread: LoopThread, sidecar: Sidecar) -> None:
    loop_thread.run(sidecar.runtime.ledger.flush())


@pytest.fixture(params=["postgres", "sqlite"])
def ledger_env(request: pytest.FixtureRequest) -> dict[str, str]:
    """The environment that picks the ledger's database (SQLite: make_sidecar's LEDGER_PATH)."""
    if request.param == "postgres":
        return {"DATABASE_URL": request.getfixturevalue("postgres_dsn")}
    return {}


def chat_messages(question: str) -> Any:
    return [{"role": "user", "content": question}]


def user(n: int) -> dict[str, str]:
    return {"X-User-Id": f"u{n:02d}"}


def price(sidecar: Sidecar, model: str, prompt: int, completion: int = 0) -> float:
    return sidecar.runtime.prices.cost(model, prompt, 0, completion)


async def chat(
    client: openai.AsyncOpenAI, question: str, headers: dict[str, str], **extra: Any
) -> tuple[str, Any]:
    raw = await client.chat.completions.with_raw_response.create(
        model=CHAT_MODEL,
        messages=chat_messages(question),
        max_tokens=MAX_TOKENS,
        extra_headers=headers,
        **extra,
    )
    return raw.headers["x-cache"], raw.parse()


async def chat_stream(
    client: openai.AsyncOpenAI, question: str, headers: dict[str, str], include_usage: bool
) -> tuple[str, Any]:
    """(X-Cache, the usage chunk's usage or None)."""
    options: Any = {"include_usage": True} if include_usage else openai.omit
    usage = None
    async with client.chat.completions.with_streaming_response.create(
        model=CHAT_MODEL,
        messages=chat_messages(question),
        max_tokens=MAX_TOKENS,
        stream=True,
        stream_options=options,
        extra_headers=headers,
    ) as raw:
        status = raw.headers["x-cache"]
        async for chunk in await raw.parse():
            if not chunk.choices and chunk.usage is not None:
                usage = chunk.usage
    return status, usage


async def embed(
    client: openai.AsyncOpenAI, inputs: Any, headers: dict[str, str]
) -> tuple[dict[str, str], Any]:
    raw = await client.embeddings.with_raw_response.create(
        model=EMBED_MODEL, input=inputs, extra_headers=headers
    )
    return dict(raw.headers), raw.parse()


async def test_mixed_requests_make_one_costed_row_each(
    make_sidecar: SidecarFactory,
    stub: StubServer,
    loop_thread: LoopThread,
    ledger_env: dict[str, str],
) -> None:
    sidecar = make_sidecar(AI_BATCH_SIZE="10", AI_BATCH_WAIT_MS="200", **ledger_env)
    client, other = sidecar.aclient(), sidecar.aclient(OTHER_API_KEY)
    beginner = {"X-Persona-Experience": "beginner", "X-Persona-Tone": "formal"}
    expected: dict[str, Expect] = {}

    def chat_cost(question: str) -> tuple[int, float]:
        prompt = chat_prompt_tokens(chat_messages(question))
        return prompt, price(sidecar, CHAT_MODEL, prompt, MAX_TOKENS)

    def chat_expect(question: str, status: str, **kw: Any) -> Expect:
        prompt, cost = chat_cost(question)
        paid = status in ("MISS", "BYPASS")
        return Expect(
            "chat.completions", CHAT_MODEL, status, prompt, MAX_TOKENS,
            cost if paid else 0.0, 0.0 if paid else cost, **kw,
        )  # fmt: skip

    # Chat JSON: a miss, then its hit (same persona, another user).
    q1 = "Explain photosynthesis to a ten year old."
    status, answer = await chat(client, q1, {**user(1), **beginner})
    assert status == "MISS" and answer.usage.completion_tokens == MAX_TOKENS
    assert answer.usage.prompt_tokens == chat_prompt_tokens(chat_messages(q1))
    expected["u01"] = chat_expect(q1, "MISS", persona={"experience": "beginner", "tone": "formal"})
    assert (await chat(client, q1, {**user(2), **beginner}))[0] == "HIT"
    expected["u02"] = chat_expect(q1, "HIT", persona={"experience": "beginner", "tone": "formal"})

    # Streams: a miss with the usage chunk, a miss without it (stripped), a streamed hit.
    q2, q3 = "Name three rivers in Africa.", "What is a prime number?"
    status, usage = await chat_stream(client, q2, user(3), include_usage=True)
    assert status == "MISS" and usage.prompt_tokens == chat_cost(q2)[0]
    expected["u03"] = chat_expect(q2, "MISS")
    assert await chat_stream(client, q3, user(4), include_usage=False) == ("MISS", None)
    expected["u04"] = chat_expect(q3, "MISS")
    status, usage = await chat_stream(client, q3, user(5), include_usage=True)
    assert status == "HIT" and usage.completion_tokens == MAX_TOKENS
    expected["u05"] = chat_expect(q3, "HIT")

    # Coalesced followers: three identical concurrent misses, one upstream call.
    q4 = "Why is the sky blue?"
    calls = stub.calls
    answers = await gathered(sidecar, stub, [chat(client, q4, user(n)) for n in (6, 7, 8)])
    assert [a[0] for a in answers] == ["MISS", "COALESCED", "COALESCED"]
    assert stub.calls == calls + 1
    expected["u06"] = chat_expect(q4, "MISS")
    expected["u07"] = chat_expect(q4, "COALESCED")
    expected["u08"] = chat_expect(q4, "COALESCED")

    # Embeddings: two inputs, then the same two and a new one (a partial hit).
    words = ["alpha beta", "gamma delta epsilon"]
    headers, answer = await embed(client, words, user(9))
    assert headers["x-cache"] == "MISS" and answer.usage.prompt_tokens == 5
    expected["u09"] = Expect(
        "embeddings", EMBED_MODEL, "MISS", 5, cost=price(sidecar, EMBED_MODEL, 5)
    )
    headers, answer = await embed(client, [*words, "zeta"], user(10))
    # The answer's usage counts every input, cached or not (README: usage on hits); the row
    # below records what was paid for.
    assert (headers["x-cache"], headers["x-cache-hits"], answer.usage.prompt_tokens) == (
        "MISS", "2/3", 6,
    )  # fmt: skip
    expected["u10"] = Expect(
        "embeddings", EMBED_MODEL, "MISS", 6,
        cost=price(sidecar, EMBED_MODEL, 1), saved=price(sidecar, EMBED_MODEL, 5),
    )  # fmt: skip

    # Single-input embeddings arriving together: one merged upstream call.
    singles = ["one", "two words", "three more words", "and four words here"]
    inputs_per_call = len(stub.fake.embedding_inputs_per_call)
    batched = await asyncio.gather(
        *(embed(client, text, user(11 + n)) for n, text in enumerate(singles))
    )
    assert stub.fake.embedding_inputs_per_call[inputs_per_call:] == [4]
    assert {h["x-batch-size"] for h, _ in batched} == {"4"}
    shares = [a.usage.prompt_tokens for _, a in batched]
    assert sum(shares) == 1 + 2 + 3 + 4  # what the stub charged for the merged call
    for n, share in enumerate(shares):
        cost = price(sidecar, EMBED_MODEL, share)
        expected[f"u{11 + n:02d}"] = Expect("embeddings", EMBED_MODEL, "MISS", share, cost=cost)

    # Moderations: a miss, then its hit (free model: cost 0 either way).
    for n, status in ((15, "MISS"), (16, "HIT")):
        raw = await client.moderations.with_raw_response.create(
            model="omni-moderation-latest", input="a calm sentence", extra_headers=user(n)
        )
        assert raw.headers["x-cache"] == status
        expected[f"u{n}"] = Expect("moderations", "omni-moderation-latest", status)

    # No-store: paid, never stored, from another tenant.
    q5 = "List the planets."
    bypass = {**user(17), "Cache-Control": "no-store"}
    assert (await chat(other, q5, bypass))[0] == "BYPASS"
    expected["u17"] = chat_expect(q5, "BYPASS", tenant_key=OTHER_API_KEY)

    # An upstream 500: relayed, costs nothing, still one row.
    stub.fake.fail_next, stub.fake.fail_status = 1, 500
    with pytest.raises(openai.InternalServerError):
        await chat(client, "Will this fail?", user(18))
    expected["u18"] = Expect("chat.completions", CHAT_MODEL, "MISS", status=500)

    flush(loop_thread, sidecar)
    db = ledger_of(sidecar)
    assert await db.count() == len(expected) == 18
    rows = {row["user_id"]: row for row in (await db.rows_by_id()).values()}
    assert rows.keys() == expected.keys()
    keys = sidecar.runtime.keys
    for uid, want in expected.items():
        row = rows[uid]
        persona = row["persona"] if isinstance(row["persona"], dict) else json.loads(row["persona"])
        assert row["tenant"] == keys.tenant_id(f"Bearer {want.tenant_key}"), uid
        assert (row["request_type"], row["model"]) == (want.request_type, want.model), uid
        assert (row["cache_status"], bool(row["cache_hit"])) == (
            want.cache_status, want.cache_status == "HIT",
        ), uid  # fmt: skip
        assert (row["prompt_tokens"], row["completion_tokens"]) == (want.prompt, want.completion), (
            uid
        )
        assert row["cost"] == pytest.approx(want.cost, rel=1e-9, abs=1e-15), uid
        assert row["saved_cost"] == pytest.approx(want.saved, rel=1e-9, abs=1e-15), uid
        assert row["status"] == want.status, uid
        if want.persona is not None:
            assert persona == want.persona, uid
    assert expected["u01"].cost > 0 and expected["u10"].saved > 0
    assert_rollup_matches(await db.rollup(), await db.grouped())
    assert_rollup_matches(await db.rollup("tenant"), await db.grouped("tenant"))
    stats = sidecar.runtime.ledger.stats
    assert (stats.dropped, stats.rejected, stats.journal_pending) == (0, 0, 0)


@pytest.fixture(params=["memory", "redis"])
def budget_store(request: pytest.FixtureRequest) -> dict[str, str]:
    if request.param == "redis":
        return {"REDIS_URL": request.getfixturevalue("redis_url")}
    return {}


async def test_a_budget_stops_the_request_that_would_cross_it(
    make_sidecar: SidecarFactory,
    stub: StubServer,
    loop_thread: LoopThread,
    ledger_env: dict[str, str],
    budget_store: dict[str, str],
) -> None:
    receiver = Receiver()
    loop_thread.run(receiver.start())
    try:
        await _spend_until_refused(
            make_sidecar, stub, loop_thread, ledger_env, budget_store, receiver
        )
    finally:
        loop_thread.run(receiver.close())


async def _spend_until_refused(
    make_sidecar: SidecarFactory,
    stub: StubServer,
    loop_thread: LoopThread,
    ledger_env: dict[str, str],
    spend: dict[str, str],
    receiver: Receiver,
) -> None:
    # A chat of ~25 prompt tokens and 7 completion tokens costs ~8e-6 USD; the estimate (body
    # length / 4 chars a token, max_tokens) is a little higher. 1e-4 USD lasts about 12 calls.
    limit = 1e-4
    sidecar = make_sidecar(
        BUDGET_TENANT_DAILY_USD=str(limit), ALERT_WEBHOOK_URL=receiver.url, **ledger_env, **spend
    )
    client = sidecar.aclient()
    answered = 0
    refused: openai.RateLimitError | None = None
    for n in range(100):
        calls = stub.calls
        try:
            await chat(client, f"Question number {n}: what is {n} squared?", user(n))
        except openai.RateLimitError as exc:
            refused = exc
            assert stub.calls == calls  # refused before any upstream call
            break
        answered += 1
        assert stub.calls == calls + 1
    assert refused is not None and 5 <= answered < 100
    assert refused.status_code == 429 and refused.code == "budget_exceeded"
    # A hit costs nothing, so it is still served; further misses are still refused.
    status, _ = await chat(client, "Question number 0: what is 0 squared?", user(99))
    assert status == "HIT"
    with pytest.raises(openai.RateLimitError):
        await chat(client, "One more question?", user(98))
    loop_thread.run(sidecar.runtime.budgets.alerter.drain())
    assert receiver.thresholds(scope="tenant", period="daily") == [0.5, 0.8, 1.0]
    assert len(receiver.bodies) == 3
    tenant = sidecar.runtime.keys.tenant_id(f"Bearer {API_KEY}")
    assert {body["tenant"] for body in receiver.bodies} == {tenant}

    flush(loop_thread, sidecar)
    db = ledger_of(sidecar)
    rows = list((await db.rows_by_id()).values())
    assert len(rows) == answered + 3  # the refusals are rows too, with status 429
    refusals = [row for row in rows if row["status"] == 429]
    assert len(refusals) == 2 and all(row["cost"] == 0 for row in refusals)
    spent = sum(row["cost"] for row in rows)
    assert limit * 0.8 <= spent <= limit
