"""Micro-batching of single-input embeddings and moderations (docs/design.md §4, issue 3 item 3): a
real sidecar in front of the stub upstream, driven concurrently by the official async SDK."""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import openai
import pytest
from multidict import CIMultiDict
from prometheus_client import CollectorRegistry

from proxy.dispatch.batch_shapes import Share, batch_key
from proxy.dispatch.batcher import Batcher
from proxy.handlers import embeddings_fetch
from proxy.metrics import Metrics
from proxy.settings_load import load_settings
from proxy.upstream.breakers import BreakerBoard
from proxy.upstream.client import UpstreamClient
from proxy.upstream.gate import Priority, UpstreamGate
from proxy.upstream.guarded import GuardedUpstream
from proxy.vectors import from_wire
from tests.fixtures.burst import Burst, burst
from tests.fixtures.sidecar import (
    API_KEY,
    OTHER_API_KEY,
    STORES,
    Sidecar,
    SidecarFactory,
    Stub,
    store_env,
)

MODEL = "text-embedding-3-small"
Clients = Callable[..., openai.AsyncOpenAI]
# Ten concurrent SDK clients (each its own connection) must land in one batch even on a loaded
# machine: each arrival keeps the batch open 200 ms more (up to 2 s); a full batch goes at once.
BATCH = {
    "AI_BATCH_SIZE": "10",
    "AI_BATCH_WAIT_MS": "200",
    "AI_BATCH_GAP_MS": "200",
    "AI_BATCH_MAX_WAIT_MS": "2000",
}
EMBEDDINGS = "/v1/embeddings"


@pytest.fixture(params=STORES)
def batched(request: pytest.FixtureRequest, make_sidecar: SidecarFactory) -> Sidecar:
    """Batches of up to 10 inputs (collected while arrivals keep coming), on every cache store."""
    return make_sidecar(**store_env(request, request.param), **BATCH)


@pytest.fixture
async def clients() -> AsyncIterator[Clients]:
    """`clients(sidecar, api_key=API_KEY)`: an AsyncOpenAI client, closed at teardown."""
    made: list[openai.AsyncOpenAI] = []

    def make(sidecar: Sidecar, api_key: str = API_KEY) -> openai.AsyncOpenAI:
        made.append(sidecar.aclient(api_key))
        return made[-1]

    yield make
    for client in made:
        await client.close()


def texts(count: int, prefix: str = "item") -> list[str]:
    """Distinct inputs of 1 to 4 words, so their token counts differ."""
    return [" ".join([f"{prefix}{n}"] + ["word"] * (n % 4)) for n in range(count)]


def direct_vectors(stub: Stub, inputs: list[Any], **kwargs: Any) -> list[list[float]]:
    """What the upstream itself answers for `inputs`, asked in one call."""
    client = openai.OpenAI(base_url=stub.url, api_key=API_KEY, max_retries=0)
    answer = client.embeddings.create(model=MODEL, input=inputs, **kwargs)
    return [item.embedding for item in answer.data]


async def embed_one(
    client: openai.AsyncOpenAI, item: Any, **kwargs: Any
) -> tuple[Any, dict[str, str]]:
    raw = await client.embeddings.with_raw_response.create(model=MODEL, input=item, **kwargs)
    return raw.parse(), dict(raw.headers)


async def embed_all(
    client: openai.AsyncOpenAI, items: list[Any], **kwargs: Any
) -> list[tuple[Any, dict[str, str]]]:
    return await asyncio.gather(*(embed_one(client, item, **kwargs) for item in items))


def sent_inputs(stub: Stub, path: str = EMBEDDINGS) -> list[list[Any]]:
    """The `input` of every call the stub received on `path`, in order."""
    return [r.body["input"] for r in stub.fake.requests if r.path == path]


async def test_fifty_concurrent_requests_share_few_calls(
    batched: Sidecar, stub: Stub, clients: Clients
) -> None:
    inputs = texts(50)
    answers = await embed_all(clients(batched), inputs)
    calls = stub.fake.calls[EMBEDDINGS]
    assert calls <= math.ceil(50 / 10) + 1
    per_call = stub.fake.embedding_inputs_per_call
    assert sum(per_call) == 50 and max(per_call) <= 10
    assert sorted(x for call in sent_inputs(stub) for x in call) == sorted(inputs)

    expected = direct_vectors(stub, inputs)
    charged = sum(len(item.split()) for item in inputs)  # the stub charges a token per word
    assert sum(answer.usage.prompt_tokens for answer, _ in answers) == charged
    for (answer, headers), vector in zip(answers, expected, strict=True):
        assert [item.embedding for item in answer.data] == [vector]
        assert answer.usage.total_tokens == answer.usage.prompt_tokens
        assert headers["x-cache"] == "MISS"
        assert headers["x-cache-hits"] == "0/1"
        assert 1 <= int(headers["x-batch-size"]) <= 10
    assert sum(1 / int(h["x-batch-size"]) for _, h in answers) == pytest.approx(calls)

    # Every item was stored under its own key: asked again, nothing goes upstream.
    calls = stub.fake.calls[EMBEDDINGS]
    again = await embed_all(clients(batched), inputs[:5])
    assert [h["x-cache"] for _, h in again] == ["HIT"] * 5
    assert all("x-batch-size" not in h for _, h in again)
    assert stub.fake.calls[EMBEDDINGS] == calls


async def test_different_dimensions_never_share_a_call(
    batched: Sidecar, stub: Stub, clients: Clients
) -> None:
    short, full = texts(5, "short"), texts(5, "full")
    client = clients(batched)
    results = await asyncio.gather(embed_all(client, short, dimensions=4), embed_all(client, full))
    assert stub.fake.calls[EMBEDDINGS] == 2
    by_dimensions = {r.body.get("dimensions"): sorted(r.body["input"]) for r in stub.fake.requests}
    assert by_dimensions == {4: sorted(short), None: sorted(full)}
    assert all(len(a.data[0].embedding) == 4 for a, _ in results[0])
    assert all(len(a.data[0].embedding) != 4 for a, _ in results[1])


async def test_api_keys_never_share_a_call_in_pass_through(
    batched: Sidecar, stub: Stub, clients: Clients
) -> None:
    ours, theirs = texts(4, "ours"), texts(4, "theirs")
    await asyncio.gather(
        embed_all(clients(batched), ours), embed_all(clients(batched, OTHER_API_KEY), theirs)
    )
    assert stub.fake.calls[EMBEDDINGS] == 2
    by_key = {r.headers["authorization"]: sorted(r.body["input"]) for r in stub.fake.requests}
    assert by_key == {f"Bearer {API_KEY}": sorted(ours), f"Bearer {OTHER_API_KEY}": sorted(theirs)}


async def test_managed_mode_tenants_share_a_call(
    make_sidecar: SidecarFactory, stub: Stub, clients: Clients
) -> None:
    sidecar = make_sidecar(
        UPSTREAM_API_KEY="sk-upstream", SIDECAR_KEYS="sc-one=team-a,sc-two=team-b", **BATCH
    )
    one, two = texts(4, "one"), texts(4, "two")
    results = await asyncio.gather(
        embed_all(clients(sidecar, "sc-one"), one), embed_all(clients(sidecar, "sc-two"), two)
    )
    assert stub.fake.calls[EMBEDDINGS] == 1
    assert sorted(sent_inputs(stub)[0]) == sorted(one + two)
    assert stub.fake.requests[0].headers["authorization"] == "Bearer sk-upstream"
    expected = direct_vectors(stub, one + two)
    got = [a.data[0].embedding for team in results for a, _ in team]
    assert got == expected
    assert {h["x-batch-size"] for team in results for _, h in team} == {"8"}


async def test_a_lone_request_waits_about_the_batch_wait(
    make_sidecar: SidecarFactory, stub: Stub, clients: Clients
) -> None:
    client = clients(
        make_sidecar(AI_BATCH_SIZE="10", AI_BATCH_WAIT_MS="300", AI_BATCH_MAX_WAIT_MS="300")
    )
    await embed_one(client, "warm the connection")  # not timed: connection set-up
    started = time.monotonic()
    answer, headers = await embed_one(client, "alone")
    elapsed = time.monotonic() - started
    assert 0.29 <= elapsed < 1.5
    assert headers["x-batch-size"] == "1"
    assert answer.data[0].embedding == direct_vectors(stub, ["alone"])[0]


def arrivals(stub: Stub, path: str = EMBEDDINGS) -> list[float]:
    """When each call on `path` reached the stub (time.monotonic(), as the tests' own)."""
    return [r.at for r in stub.fake.requests if r.path == path]


async def test_a_lone_request_is_not_held_for_the_gap_or_the_cap(
    make_sidecar: SidecarFactory, stub: Stub, clients: Clients
) -> None:
    # An idle lane waits AI_BATCH_WAIT_MS (5 ms) only: the 5 s gap and cap are for bursts.
    sidecar = make_sidecar(AI_BATCH_GAP_MS="5000", AI_BATCH_MAX_WAIT_MS="5000")
    started = time.monotonic()
    answer, headers = await embed_one(clients(sidecar), "alone")
    [arrived] = arrivals(stub)
    assert arrived - started < 2.5  # well short of the gap and cap it would otherwise wait
    assert headers["x-batch-size"] == "1"
    assert answer.data[0].embedding == direct_vectors(stub, ["alone"])[0]


async def test_a_full_batch_goes_at_once(
    make_sidecar: SidecarFactory, stub: Stub, clients: Clients
) -> None:
    client = clients(
        make_sidecar(
            AI_BATCH_SIZE="4",
            AI_BATCH_WAIT_MS="5000",
            AI_BATCH_GAP_MS="5000",
            AI_BATCH_MAX_WAIT_MS="5000",
        )
    )
    started = time.monotonic()
    answers = await embed_all(client, texts(4))
    assert arrivals(stub)[0] - started < 2.5  # not held for the 5 s wait
    assert stub.fake.embedding_inputs_per_call == [4]
    assert {h["x-batch-size"] for _, h in answers} == {"4"}


@pytest.mark.parametrize("path", [EMBEDDINGS, "/v1/moderations"])
def test_a_threaded_burst_that_trickles_in_makes_few_calls(
    make_sidecar: SidecarFactory, stub: Stub, path: str
) -> None:
    # 40 threaded clients (another process, as apps are), one every 20 ms: a fixed 5 ms
    # window sent most of them on their own (issue 15: "sometimes 13 upstream calls"; checked:
    # 20 to 40 here); the gap keeps the batch open. The first, on an idle lane, waits only
    # 5 ms and goes alone: 5 batches (1, 10, 10, 10, 9) is the rule, and a loaded machine may
    # stall a thread past the gap once.
    sidecar = make_sidecar(AI_BATCH_SIZE="10", AI_BATCH_GAP_MS="100", LOG_LEVEL="WARNING")
    inputs = texts(40, "burst")
    inputs[17] = "a BAD_INPUT in the burst"
    outcomes = burst(Burst(sidecar.url, API_KEY, inputs, 0.020, path))
    # The batches: the calls that sent new inputs (not the bisection's resends).
    seen: set[str] = set()
    batches = []
    for sent in sent_inputs(stub, path):
        if not seen & set(sent):
            batches.append(len(sent))
        seen.update(sent)
    assert len(batches) <= 6, batches
    assert sum(batches) == 40 and max(batches) <= 10
    # The bad input failed its own request only.
    bad = outcomes.pop(17)
    assert (bad.status, bad.param) == (400, "input")
    assert {(o.status, o.cache) for o in outcomes} == {(200, "MISS")}


async def test_a_steady_trickle_longer_than_the_cap_is_split(
    make_sidecar: SidecarFactory, stub: Stub, clients: Clients
) -> None:
    # A request every 50 ms for 1.2 s: each keeps the batch open (gap 200 ms), but no batch
    # stays open past the 300 ms cap, so no request waits longer than that.
    sidecar = make_sidecar(AI_BATCH_SIZE="100", AI_BATCH_GAP_MS="200", AI_BATCH_MAX_WAIT_MS="300")
    client = clients(sidecar)

    async def later(index: int, item: str) -> tuple[Any, dict[str, str]]:
        await asyncio.sleep(index * 0.050)
        return await embed_one(client, item)

    inputs = texts(24, "trickle")
    answers = await asyncio.gather(*(later(n, item) for n, item in enumerate(inputs)))
    per_call = stub.fake.embedding_inputs_per_call
    assert len(per_call) >= 2, per_call  # the cap split it: a gap alone would wait for all 24
    assert len(per_call) <= 12, per_call  # and the gap merged it: 24 calls at a fixed 5 ms
    assert sum(per_call) == 24
    assert [a.data[0].embedding for a, _ in answers] == direct_vectors(stub, inputs)


async def test_one_bad_input_fails_only_its_own_request(
    batched: Sidecar, stub: Stub, clients: Clients
) -> None:
    inputs = texts(10)
    inputs[6] = "this one has a BAD_INPUT marker"
    results = await asyncio.gather(
        *(embed_one(clients(batched), item) for item in inputs), return_exceptions=True
    )
    assert stub.fake.embedding_inputs_per_call[0] == 10  # all in one call first
    bad = results[6]
    assert isinstance(bad, openai.BadRequestError)
    assert bad.param == "input"
    assert "input[0]" in bad.message  # the error of its own input, as if sent alone
    good = [inputs[i] for i in range(10) if i != 6]
    expected = direct_vectors(stub, good)
    answered = [r for i, r in enumerate(results) if i != 6]
    for result, vector in zip(answered, expected, strict=True):
        assert isinstance(result, tuple)
        assert result[0].data[0].embedding == vector
    # The nine are stored; the bad one is not.
    calls = stub.fake.calls[EMBEDDINGS]
    again = await embed_all(clients(batched), good)
    assert {h["x-cache"] for _, h in again} == {"HIT"}
    assert stub.fake.calls[EMBEDDINGS] == calls


@pytest.mark.parametrize("failure", ["500", "timeout"])
async def test_an_upstream_failure_fails_every_request_of_the_batch(
    make_sidecar: SidecarFactory, stub: Stub, clients: Clients, failure: str
) -> None:
    sidecar = make_sidecar(UPSTREAM_READ_TIMEOUT="0.5", **BATCH)
    if failure == "500":
        stub.fake.fail_next, stub.fake.fail_retry_after = 1, "7"
    else:
        stub.fake.hang = True
    inputs = texts(5)
    results = await asyncio.gather(
        *(embed_one(clients(sidecar), item) for item in inputs), return_exceptions=True
    )
    stub.fake.hang = False
    assert stub.fake.calls[EMBEDDINGS] == 1
    for result in results:
        assert isinstance(result, openai.InternalServerError)
        if failure == "500":
            assert result.status_code == 500
            assert result.response.headers["retry-after"] == "7"
            assert "fake upstream" in result.message  # the upstream's own error
        else:
            assert result.status_code == 504
            assert result.code == "upstream_timeout"
    # Nothing was stored: the same requests go upstream again.
    answers = await embed_all(clients(sidecar), inputs)
    assert {h["x-cache"] for _, h in answers} == {"MISS"}
    assert stub.fake.calls[EMBEDDINGS] == 2


async def test_cached_items_are_not_sent_again(
    batched: Sidecar, stub: Stub, clients: Clients
) -> None:
    inputs = texts(10)
    client = clients(batched)
    await embed_all(client, inputs[:5])
    calls = stub.fake.calls[EMBEDDINGS]
    answers = await embed_all(client, inputs)
    assert [h["x-cache"] for _, h in answers] == ["HIT"] * 5 + ["MISS"] * 5
    assert stub.fake.calls[EMBEDDINGS] == calls + 1
    assert sorted(sent_inputs(stub)[-1]) == sorted(inputs[5:])
    assert [a.data[0].embedding for a, _ in answers] == direct_vectors(stub, inputs)
    # A hit answers the usage its miss did (README: usage on hits).
    assert [a.usage.prompt_tokens for a, _ in answers[:5]] == [len(t.split()) for t in inputs[:5]]


async def test_identical_inputs_in_a_batch_are_sent_once(
    batched: Sidecar, stub: Stub, clients: Clients
) -> None:
    item = "the same words three times"
    answers = await embed_all(clients(batched), [item, item, item, "another one"])
    assert stub.fake.embedding_inputs_per_call == [2]
    vector = direct_vectors(stub, [item])[0]
    assert [a.data[0].embedding for a, _ in answers[:3]] == [vector] * 3
    charged = len(item.split()) + 2  # a token per word
    assert sum(a.usage.prompt_tokens for a, _ in answers) == charged
    assert {h["x-batch-size"] for _, h in answers} == {"4"}


async def test_multi_input_requests_keep_their_own_call(
    batched: Sidecar, stub: Stub, clients: Clients
) -> None:
    client = clients(batched)
    many = client.embeddings.with_raw_response.create(model=MODEL, input=texts(3, "many"))
    raw, singles = await asyncio.gather(many, embed_all(client, texts(3, "single")))
    assert sorted(stub.fake.embedding_inputs_per_call) == [3, 3]
    assert sorted(texts(3, "many")) in [sorted(x) for x in sent_inputs(stub)]
    assert "x-batch-size" not in raw.headers
    assert {h["x-batch-size"] for _, h in singles} == {"3"}


async def wait_until(condition: Any, limit_s: float = 5.0) -> None:
    deadline = time.monotonic() + limit_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


async def test_a_client_gone_before_the_flush_is_not_sent(
    make_sidecar: SidecarFactory, stub: Stub, clients: Clients
) -> None:
    sidecar = make_sidecar(AI_BATCH_SIZE="10", AI_BATCH_WAIT_MS="500", AI_BATCH_MAX_WAIT_MS="500")
    batcher = sidecar.runtime.batcher
    body = json.dumps({"model": MODEL, "input": "leaving early"}).encode()
    host, _, port = sidecar.root.removeprefix("http://").partition(":")
    _reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        f"POST {EMBEDDINGS} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {API_KEY}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    await writer.drain()
    await wait_until(lambda: batcher.pending == 1)
    writer.close()
    await writer.wait_closed()
    answer, headers = await embed_one(clients(sidecar), "staying")  # joins the same batch
    assert sent_inputs(stub) == [["staying"]]
    assert headers["x-batch-size"] == "1"
    assert answer.data[0].embedding == direct_vectors(stub, ["staying"])[0]
    assert stub.fake.embedding_inputs_per_call == [1, 1]  # and the direct call above


async def moderate(client: openai.AsyncOpenAI, text: Any) -> tuple[Any, dict[str, str]]:
    raw = await client.moderations.with_raw_response.create(
        model="omni-moderation-latest", input=text
    )
    return raw.parse(), dict(raw.headers)


def direct_results(stub: Stub, inputs: list[str]) -> list[dict[str, Any]]:
    client = openai.OpenAI(base_url=stub.url, api_key=API_KEY, max_retries=0)
    answer = client.moderations.create(model="omni-moderation-latest", input=inputs)
    return [result.model_dump() for result in answer.results]


async def test_moderations_are_batched(batched: Sidecar, stub: Stub, clients: Clients) -> None:
    inputs = [f"I will kill process {n}" if n % 3 == 0 else f"hello {n}" for n in range(10)]
    client = clients(batched)
    answers = await asyncio.gather(*(moderate(client, text) for text in inputs))
    assert stub.fake.moderation_inputs_per_call == [10]
    expected = direct_results(stub, inputs)
    for (answer, headers), result in zip(answers, expected, strict=True):
        assert [r.model_dump() for r in answer.results] == [result]
        assert answer.model == "omni-moderation-latest"
        assert headers["x-cache"] == "MISS"
        assert headers["x-batch-size"] == "10"
    assert [a.results[0].flagged for a, _ in answers] == [n % 3 == 0 for n in range(10)]
    # Stored in the whole-request format: every one is a hit now, as it would be unbatched.
    again = await asyncio.gather(*(moderate(client, text) for text in inputs))
    assert {h["x-cache"] for _, h in again} == {"HIT"}
    assert [a.model_dump() for a, _ in again] == [a.model_dump() for a, _ in answers]
    assert stub.fake.moderation_inputs_per_call == [10, 10]  # and the direct call


async def test_moderations_bad_input_and_coalescing(
    batched: Sidecar, stub: Stub, clients: Clients
) -> None:
    inputs = ["fine text", "a BAD_INPUT text", "fine text", "more fine text"]
    client = clients(batched)
    results = await asyncio.gather(
        *(moderate(client, text) for text in inputs), return_exceptions=True
    )
    assert stub.fake.moderation_inputs_per_call[0] == 3  # the identical pair went up once
    bad = results[1]
    assert isinstance(bad, openai.BadRequestError) and bad.param == "input"
    first, second, third = results[0], results[2], results[3]
    assert isinstance(first, tuple) and isinstance(second, tuple) and isinstance(third, tuple)
    assert sorted([first[1]["x-cache"], second[1]["x-cache"]]) == ["COALESCED", "MISS"]
    assert first[0].model_dump() == second[0].model_dump()
    assert not third[0].results[0].flagged


async def test_moderations_upstream_500_fails_the_batch(
    batched: Sidecar, stub: Stub, clients: Clients
) -> None:
    stub.fake.fail_next = 1
    client = clients(batched)
    results = await asyncio.gather(
        *(moderate(client, f"text {n}") for n in range(4)), return_exceptions=True
    )
    assert stub.fake.calls["/v1/moderations"] == 1
    assert len(sent_inputs(stub, "/v1/moderations")[0]) == 4
    assert all(isinstance(r, openai.InternalServerError) for r in results)
    assert all(r.status_code == 500 for r in results if isinstance(r, openai.APIStatusError))


async def test_wait_zero_still_merges_one_loop_turn(stub: Stub) -> None:
    settings = load_settings(
        {"UPSTREAM_BASE_URL": stub.url, "AI_BATCH_SIZE": "10", "AI_BATCH_WAIT_MS": "0"}
    )
    upstream = UpstreamClient.open(settings.upstream)
    guarded = GuardedUpstream(
        upstream, UpstreamGate(4), BreakerBoard(stub.url, 5, 30), Metrics(CollectorRegistry())
    )
    batcher = Batcher(settings.batch, guarded)
    params = {"model": MODEL}
    headers = {"Authorization": f"Bearer {API_KEY}"}
    key = batch_key("embeddings", EMBEDDINGS, params, headers["Authorization"], {})
    try:
        shares = await asyncio.gather(
            *(
                batcher.submit(
                    key,
                    embeddings_fetch.BATCHED,
                    item,
                    params=params,
                    headers=CIMultiDict(headers),
                    priority=Priority.NORMAL,
                    wanted=lambda: True,
                )
                for item in texts(5)
            )
        )
    finally:
        await batcher.close()
        await upstream.close()
    assert stub.fake.embedding_inputs_per_call == [5]
    assert all(isinstance(share, Share) and share.requests == 5 for share in shares)
    assert [s.part for s in shares if isinstance(s, Share)] == [
        from_wire(v) for v in direct_vectors(stub, texts(5))
    ]


async def test_an_open_breaker_fails_the_whole_batch_fast(
    make_sidecar: SidecarFactory, stub: Stub, clients: Clients
) -> None:
    sidecar = make_sidecar(BREAKER_FAIL_MAX="1", BREAKER_RESET_S="60", **BATCH)
    stub.fake.fail_next = 1
    with pytest.raises(openai.InternalServerError):
        await embed_one(clients(sidecar), "trips the breaker")
    results = await asyncio.gather(
        *(embed_one(clients(sidecar), item) for item in texts(5)), return_exceptions=True
    )
    assert stub.fake.calls[EMBEDDINGS] == 1  # only the call that tripped it
    for result in results:
        assert isinstance(result, openai.APIStatusError)
        assert result.status_code == 503
        assert result.code == "circuit_open"
        assert int(result.response.headers["retry-after"]) > 0
