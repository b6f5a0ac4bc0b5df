"""The client matrix (issue 21): the clients teams put in front of the sidecar, each with its
natural defaults, each showing MISS then HIT for one upstream call, and the same question from
every client costing one upstream call between them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from aiohttp import web

from tests import clients_support as c
from tests.fixtures.sidecar import LoopThread, Sidecar, Stub, serve_double

ITEMS = ["the first item", "the second item"]


@pytest.fixture
def wire(loop_thread: LoopThread) -> Iterator[c.WireRecorder]:
    recorder = c.WireRecorder()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", recorder.handle)
    runner, recorder.url = loop_thread.run(serve_double(app))
    yield recorder
    loop_thread.run(runner.cleanup())


def test_openai_python_sync(sidecar: Sidecar, stub: Stub) -> None:
    client = sidecar.client()
    first = c.openai_chat(client, "sync chat")
    assert first[0] == "MISS"
    assert c.openai_chat(client, "sync chat") == ("HIT", first[1])
    assert stub.calls == 1
    first = c.openai_stream(client, "sync stream")
    assert first[0] == "MISS"
    assert c.openai_stream(client, "sync stream") == ("HIT", first[1])
    assert stub.calls == 2
    first = c.openai_embed(client, ITEMS)
    assert first[0] == "MISS"
    assert c.openai_embed(client, ITEMS) == ("HIT", first[1])
    assert stub.calls == 3


async def test_openai_python_async(sidecar: Sidecar, stub: Stub) -> None:
    client = sidecar.aclient()
    first = await c.async_openai_chat(client, "async chat")
    assert first[0] == "MISS"
    assert await c.async_openai_chat(client, "async chat") == ("HIT", first[1])
    assert stub.calls == 1
    first = await c.async_openai_stream(client, "async stream")
    assert first[0] == "MISS"
    assert await c.async_openai_stream(client, "async stream") == ("HIT", first[1])
    assert stub.calls == 2
    first = await c.async_openai_embed(client, ITEMS)
    assert first[0] == "MISS"
    assert await c.async_openai_embed(client, ITEMS) == ("HIT", first[1])
    assert stub.calls == 3
    await client.close()


def test_openai_node(sidecar: Sidecar, stub: Stub) -> None:
    chat, chat_again = c.node_client(sidecar.url, "chat", "chat", prompt="node chat")
    assert (chat["xCache"], chat_again["xCache"]) == ("MISS", "HIT")
    assert chat_again["content"] == chat["content"]
    assert stub.calls == 1
    answers = c.node_client(sidecar.url, "stream", "stream", "embed", "embed", prompt="node sse")
    assert [a["xCache"] for a in answers] == ["MISS", "HIT", "MISS", "HIT"]
    assert answers[1]["content"] == answers[0]["content"] != ""
    assert answers[3]["content"] == answers[2]["content"]
    assert len(answers[2]["content"]) == 2
    assert stub.calls == 3


def test_langchain(sidecar: Sidecar, stub: Stub) -> None:
    first = c.langchain_invoke(sidecar.url, "langchain invoke")
    assert first[0] == "MISS"
    assert c.langchain_invoke(sidecar.url, "langchain invoke") == ("HIT", first[1])
    assert stub.calls == 1
    first = c.langchain_stream(sidecar.url, "langchain stream")
    assert first[0] == "MISS"
    assert c.langchain_stream(sidecar.url, "langchain stream") == ("HIT", first[1])
    assert stub.calls == 2
    # OpenAIEmbeddings hides the headers: the upstream count and equal vectors show the hit.
    vectors = c.langchain_embed(sidecar.url, ITEMS)
    assert stub.calls == 3
    assert c.langchain_embed(sidecar.url, ITEMS) == vectors
    assert stub.calls == 3
    # It sent the strings, so the openai SDK's request for them is a hit as well.
    assert c.openai_embed(sidecar.client(), ITEMS)[0] == "HIT"


def test_litellm(sidecar: Sidecar, stub: Stub) -> None:
    first = c.litellm_chat(sidecar.url, "litellm chat")
    assert first[0] == "MISS"
    assert c.litellm_chat(sidecar.url, "litellm chat") == ("HIT", first[1])
    assert stub.calls == 1
    first = c.litellm_stream(sidecar.url, "litellm stream")
    assert first[0] == "MISS"
    assert c.litellm_stream(sidecar.url, "litellm stream") == ("HIT", first[1])
    assert stub.calls == 2
    first = c.litellm_embed(sidecar.url, ITEMS)
    assert first[0] == "MISS"
    assert c.litellm_embed(sidecar.url, ITEMS) == ("HIT", first[1])
    assert stub.calls == 3


CROSS_PROMPT = "What is the boiling point of water at sea level?"


def _ask_everyone(base_url: str, sidecar: Sidecar | None) -> list[str]:
    """The same chat request from every client, each with its own defaults (temperature=0 as
    each spells it); the X-Cache of each answer that exposes it."""
    sync = sidecar.client() if sidecar else c.openai.OpenAI(base_url=base_url, api_key=c.API_KEY)
    seen = [c.openai_chat(sync, CROSS_PROMPT)[0]]
    seen.append(c.node_client(base_url, "chat", prompt=CROSS_PROMPT)[0]["xCache"])
    seen.append(c.langchain_invoke(base_url, CROSS_PROMPT)[0])
    seen.append(c.litellm_chat(base_url, CROSS_PROMPT)[0])
    return seen


def _sent(body: dict[str, Any]) -> str:
    return json.dumps({k: v for k, v in body.items() if k != "messages"}, sort_keys=True)


def test_one_question_from_every_client_is_one_upstream_call(
    sidecar: Sidecar, stub: Stub, wire: c.WireRecorder
) -> None:
    # What each client puts on the wire, straight to a recorder: shown if the count is wrong.
    _ask_everyone(wire.url, None)
    assert len(wire.bodies) == len(CLIENTS)
    sent = "\n".join(f"  {n}: {_sent(b)}" for n, b in zip(CLIENTS, wire.bodies, strict=True))

    seen = _ask_everyone(sidecar.url, sidecar)
    assert stub.calls == 1, f"X-Cache per client {seen}; the clients sent:\n{sent}"
    assert seen == ["MISS", "HIT", "HIT", "HIT"]


CLIENTS = ("openai (Python)", "openai (Node)", "langchain-openai", "litellm")
