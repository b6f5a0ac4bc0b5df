"""A hit is as faithful as the answer it replays (docs/design.md §3, issue 21 item 4): `Age` on
every hit, an `X-Request-ID` on every answer, one `usage` convention on every endpoint's hits,
and one id per request out of a micro-batch. Driven by the official openai SDK."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import openai

from tests.fixtures.sidecar import API_KEY, Sidecar, SidecarFactory, Stub

CHAT = [{"role": "user", "content": "Name the planets."}]
EMBED = "text-embedding-3-small"
MODERATE = "omni-moderation-latest"
REQUEST_ID = re.compile(r"^req_[0-9a-f]{32}$")


def embed(client: openai.OpenAI, inputs: list[str]) -> tuple[Any, dict[str, str]]:
    raw = client.embeddings.with_raw_response.create(model=EMBED, input=inputs)
    return raw.parse(), dict(raw.headers)


def test_embeddings_hit_has_age(sidecar: Sidecar, stub: Stub) -> None:
    client = sidecar.client()
    _, headers = embed(client, ["alpha", "beta"])
    assert headers["x-cache"] == "MISS"
    assert "age" not in headers
    _, headers = embed(client, ["beta", "alpha"])
    assert headers["x-cache"] == "HIT"
    assert stub.calls == 1
    assert 0 <= int(headers["age"]) < 60


def test_every_answer_has_a_request_id(sidecar: Sidecar, stub: Stub) -> None:
    client = sidecar.client()
    miss = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=CHAT)
    assert miss.headers["x-cache"] == "MISS"  # the fake upstream's own id, relayed
    assert miss.parse()._request_id == miss.headers["x-request-id"]
    assert REQUEST_ID.match(miss.headers["x-request-id"])

    seen = {miss.headers["x-request-id"]}
    hit = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=CHAT)
    assert hit.headers["x-cache"] == "HIT"
    completion = hit.parse()
    assert completion._request_id is not None
    assert REQUEST_ID.match(completion._request_id)
    seen.add(completion._request_id)

    with client.chat.completions.with_streaming_response.create(
        model="gpt-4o-mini", messages=CHAT, stream=True
    ) as streamed:
        assert streamed.headers["x-cache"] == "HIT"
        assert REQUEST_ID.match(streamed.headers["x-request-id"])
        seen.add(streamed.headers["x-request-id"])
        list(streamed.parse())

    embed(client, ["gamma"])
    vectors = client.embeddings.create(model=EMBED, input=["gamma"])
    assert vectors._request_id is not None and REQUEST_ID.match(vectors._request_id)
    seen.add(vectors._request_id)
    client.moderations.create(model=MODERATE, input="hello")
    verdict = client.moderations.create(model=MODERATE, input="hello")
    assert verdict._request_id is not None and REQUEST_ID.match(verdict._request_id)
    seen.add(verdict._request_id)
    assert len(seen) == 5  # one of its own per answer

    # The sidecar's own error answers carry one too.
    try:
        client.chat.completions.create(
            model="gpt-4o-mini", messages=CHAT, extra_headers={"X-Persona-Tone": "rude"}
        )
    except openai.BadRequestError as exc:
        assert exc.request_id is not None and REQUEST_ID.match(exc.request_id)
    else:
        raise AssertionError("an invalid persona header must be a 400")


def test_hits_return_the_stored_usage_on_every_endpoint(sidecar: Sidecar, stub: Stub) -> None:
    client = sidecar.client()
    chat = [client.chat.completions.create(model="gpt-4o-mini", messages=CHAT) for _ in "ab"]
    assert chat[0].usage is not None and chat[0].usage.total_tokens > 0
    assert chat[1].usage == chat[0].usage
    text = [
        client.completions.create(model="gpt-3.5-turbo-instruct", prompt="Say hi") for _ in "ab"
    ]
    assert text[0].usage is not None and text[0].usage.total_tokens > 0
    assert text[1].usage == text[0].usage
    verdicts = [client.moderations.create(model=MODERATE, input="hello") for _ in "ab"]
    assert verdicts[1].model_dump() == verdicts[0].model_dump()

    # Embeddings, assembled per item: the sum of the items' tokens, hit or miss alike.
    miss, headers = embed(client, ["one two", "three"])
    assert headers["x-cache"] == "MISS" and miss.usage.prompt_tokens > 0
    hit, headers = embed(client, ["one two", "three"])
    assert headers["x-cache"] == "HIT"
    assert hit.usage.model_dump() == miss.usage.model_dump()
    alone, _ = embed(client, ["four five six"])
    mixed, headers = embed(client, ["one two", "three", "four five six"])
    assert headers["x-cache-hits"] == "3/3"
    assert mixed.usage.prompt_tokens == miss.usage.prompt_tokens + alone.usage.prompt_tokens
    nine, _ = embed(client, ["nine"])
    partial, headers = embed(client, ["nine", "seven eight"])
    assert headers["x-cache-hits"] == "1/2"
    fresh, headers = embed(client, ["seven eight"])
    assert headers["x-cache"] == "HIT"
    assert partial.usage.prompt_tokens == nine.usage.prompt_tokens + fresh.usage.prompt_tokens
    assert stub.calls == 7


async def test_batched_moderations_each_have_their_own_id(
    make_sidecar: SidecarFactory, stub: Stub
) -> None:
    batched = make_sidecar(AI_BATCH_SIZE="10", AI_BATCH_WAIT_MS="200")
    client = openai.AsyncOpenAI(base_url=batched.url, api_key=API_KEY, max_retries=0)
    try:
        texts = [f"hello {n}" for n in range(6)]
        raws = await asyncio.gather(
            *(client.moderations.with_raw_response.create(model=MODERATE, input=t) for t in texts)
        )
        assert stub.fake.moderation_inputs_per_call == [6]
        assert {raw.headers["x-batch-size"] for raw in raws} == {"6"}
        ids = [raw.parse().id for raw in raws]
        assert len(set(ids)) == 6
        assert all(re.match(r"^modr-[0-9a-f]{32}$", i) for i in ids)
        # A hit replays its request's own answer, id included.
        again = await asyncio.gather(
            *(client.moderations.create(model=MODERATE, input=t) for t in texts)
        )
        assert [answer.id for answer in again] == ids
    finally:
        await client.close()
