"""The fake upstream speaks the OpenAI wire format well enough for the official SDK, and its
knobs and counters do what the rest of the suite relies on."""

from __future__ import annotations

import asyncio
import logging
import math
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest

from proxy.fake_upstream import FakeUpstream, start_fake_upstream
from proxy.fake_upstream.state import MAX_RECORDED_REQUESTS, REDACTED
from proxy.fake_upstream.wire import accepts_gzip

MESSAGES: list[Any] = [
    {"role": "system", "content": "You are a tutor."},
    {"role": "user", "content": "Explain caching in two lines."},
]


class Upstream:
    def __init__(self, fake: FakeUpstream, url: str, client: openai.AsyncOpenAI) -> None:
        self.fake = fake
        self.url = url
        self.root = url.removesuffix("/v1")
        self.client = client

    def sync_client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url, api_key="sk-test", max_retries=0)


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    fake = FakeUpstream()
    runner, url = await start_fake_upstream(fake)
    client = openai.AsyncOpenAI(base_url=url, api_key="sk-test", max_retries=0)
    try:
        yield Upstream(fake, url, client)
    finally:
        await client.close()
        await runner.cleanup()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


AUTH = {"Authorization": "Bearer sk-test"}
REPO_ROOT = Path(__file__).resolve().parents[1]


async def test_base_url_ends_in_v1_on_a_free_port(upstream: Upstream) -> None:
    assert upstream.url.startswith("http://127.0.0.1:")
    assert upstream.url.endswith("/v1")
    assert int(upstream.url.split(":")[2].removesuffix("/v1")) > 0


async def test_chat_is_deterministic_and_counts_tokens(upstream: Upstream) -> None:
    client = upstream.client
    first = await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    again = await client.chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, user="someone-else"
    )
    other = await client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "Something else"}]
    )
    text = first.choices[0].message.content
    assert text and text == again.choices[0].message.content
    assert text != other.choices[0].message.content
    assert first.object == "chat.completion" and first.id.startswith("chatcmpl-")
    assert first.model == "gpt-4o-mini" and first.system_fingerprint == "fp_fake"
    assert first.choices[0].finish_reason == "stop"
    assert first.choices[0].message.refusal is None
    usage = first.usage
    assert usage is not None
    assert usage.prompt_tokens == 4 + 5 + 2 * 3
    assert usage.completion_tokens == len(text.split()) == 24
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert usage.prompt_tokens_details and usage.prompt_tokens_details.cached_tokens == 0
    assert upstream.fake.calls["/v1/chat/completions"] == 3


async def test_chat_n_and_max_tokens(upstream: Upstream) -> None:
    answer = await upstream.client.chat.completions.create(
        model="gpt-4o", messages=MESSAGES, n=3, max_completion_tokens=5
    )
    texts = [c.message.content or "" for c in answer.choices]
    assert [c.index for c in answer.choices] == [0, 1, 2]
    assert len(set(texts)) == 3
    assert all(len(t.split()) == 5 for t in texts)
    assert {c.finish_reason for c in answer.choices} == {"length"}
    assert answer.usage is not None and answer.usage.completion_tokens == 15


async def test_chat_stream_matches_non_stream(upstream: Upstream) -> None:
    client = upstream.client
    plain = await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    stream = await client.chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True
    )
    chunks = [chunk async for chunk in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.object == "chat.completion.chunk" and c.usage is None for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert len({c.id for c in chunks}) == 1
    joined = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert joined == plain.choices[0].message.content


async def test_chat_stream_usage_chunk_only_when_asked(upstream: Upstream) -> None:
    client = upstream.client
    plain = await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    stream = await client.chat.completions.create(
        model="gpt-4o-mini",
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    assert chunks[-1].choices == [] and chunks[-1].usage == plain.usage
    assert all(c.usage is None for c in chunks[:-1])
    raw = upstream.fake.requests[-1]
    assert raw.body is not None and raw.body["stream"] is True


async def test_sync_client_plain_and_stream(upstream: Upstream) -> None:
    def run() -> tuple[str, str]:
        with upstream.sync_client() as client:
            plain = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
            stream = client.chat.completions.create(
                model="gpt-4o-mini", messages=MESSAGES, stream=True
            )
            joined = "".join(c.choices[0].delta.content or "" for c in stream)
            return plain.choices[0].message.content or "", joined

    plain_text, streamed_text = await asyncio.to_thread(run)
    assert plain_text and plain_text == streamed_text


async def test_stream_options_without_stream_is_400(upstream: Upstream) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await upstream.client.chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, stream_options={"include_usage": True}
        )
    assert caught.value.param == "stream_options"


async def test_legacy_completions_plain_and_stream(upstream: Upstream) -> None:
    client = upstream.client
    prompts = ["Say hello", "Say goodbye politely"]
    plain = await client.completions.create(model="gpt-3.5-turbo-instruct", prompt=prompts)
    assert plain.object == "text_completion"
    assert [c.index for c in plain.choices] == [0, 1]
    assert plain.choices[0].text != plain.choices[1].text
    assert plain.usage is not None and plain.usage.prompt_tokens == 2 + 3
    stream = await client.completions.create(
        model="gpt-3.5-turbo-instruct",
        prompt=prompts,
        stream=True,
        stream_options={"include_usage": True},
    )
    texts = ["", ""]
    usage = None
    async for chunk in stream:
        for choice in chunk.choices:
            texts[choice.index] += choice.text
        usage = chunk.usage or usage
    assert texts == [c.text for c in plain.choices]
    assert usage == plain.usage


async def test_embeddings_base64_default_matches_float(upstream: Upstream) -> None:
    client = upstream.client
    inputs = ["alpha beta", "gamma", "delta epsilon zeta"]
    decoded = await client.embeddings.create(model="text-embedding-3-small", input=inputs)
    floats = await client.embeddings.create(
        model="text-embedding-3-small", input=inputs, encoding_format="float"
    )
    assert upstream.fake.requests[0].body is not None
    assert upstream.fake.requests[0].body["encoding_format"] == "base64"
    for a, b in zip(decoded.data, floats.data, strict=True):
        assert a.index == b.index and len(a.embedding) == 8
        assert a.embedding == pytest.approx(b.embedding, rel=1e-6)
        assert math.isclose(math.fsum(v * v for v in b.embedding), 1.0, rel_tol=1e-5)
    assert floats.usage.prompt_tokens == floats.usage.total_tokens == 2 + 1 + 3
    assert upstream.fake.embedding_inputs_per_call == [3, 3]


async def test_embeddings_depend_only_on_the_item(upstream: Upstream) -> None:
    client = upstream.client
    batch = await client.embeddings.create(
        model="text-embedding-3-small", input=["a", "b"], encoding_format="float"
    )
    single = await client.embeddings.create(
        model="text-embedding-3-small", input="b", encoding_format="float"
    )
    other_model = await client.embeddings.create(
        model="text-embedding-3-large", input="b", encoding_format="float"
    )
    wide = await client.embeddings.create(model="text-embedding-3-small", input="b", dimensions=32)
    tokens = await client.embeddings.create(model="text-embedding-3-small", input=[[1, 2, 3], [4]])
    assert batch.data[1].embedding == single.data[0].embedding
    assert batch.data[0].embedding != batch.data[1].embedding
    assert other_model.data[0].embedding != single.data[0].embedding
    assert len(wide.data[0].embedding) == 32
    assert tokens.usage.prompt_tokens == 4 and len(tokens.data) == 2
    assert upstream.fake.embedding_inputs_per_call == [2, 1, 1, 1, 2]


async def test_embeddings_reject_empty_and_oversized_input(upstream: Upstream) -> None:
    client = upstream.client
    for bad in ("", [], ["ok", ""]):
        with pytest.raises(openai.BadRequestError) as caught:
            await client.embeddings.create(model="text-embedding-3-small", input=bad)
        assert caught.value.param == "input"
    with pytest.raises(openai.BadRequestError, match="2048"):
        await client.embeddings.create(model="text-embedding-3-small", input=["x"] * 2049)


async def test_bad_input_marker_names_the_index(upstream: Upstream) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await upstream.client.embeddings.create(
            model="text-embedding-3-small",
            input=["fine", "fine too", "this is BAD_INPUT", "also BAD_INPUT"],
        )
    assert caught.value.param == "input"
    assert caught.value.type == "invalid_request_error"
    assert "input[2] is invalid" in caught.value.message
    with pytest.raises(openai.BadRequestError, match=r"input\[1\] is invalid"):
        await upstream.client.moderations.create(input=["ok", "BAD_INPUT here"])


async def test_moderations(upstream: Upstream) -> None:
    answer = await upstream.client.moderations.create(input=["I will kill it", "hello there"])
    assert answer.id.startswith("modr-") and answer.model == "omni-moderation-latest"
    flagged, clean = answer.results
    assert flagged.flagged and flagged.categories.violence
    assert flagged.category_scores.violence > 0.5
    assert not clean.flagged and clean.category_scores.violence < 0.5
    assert clean.category_applied_input_types.violence == ["text"]
    again = await upstream.client.moderations.create(input="hello there")
    assert again.results[0].category_scores == clean.category_scores
    multimodal: list[Any] = [
        {"type": "text", "text": "full of hate"},
        {"type": "image_url", "image_url": {"url": "https://example.invalid/a.png"}},
    ]
    parts = await upstream.client.moderations.create(input=multimodal)
    assert len(parts.results) == 1 and parts.results[0].categories.hate
    assert "image" in parts.results[0].category_applied_input_types.violence
    assert upstream.fake.moderation_inputs_per_call == [2, 1, 1]


async def test_models(upstream: Upstream) -> None:
    page = await upstream.client.models.list()
    ids = {m.id for m in page.data}
    for expected in (
        "gpt-4o-mini",
        "gpt-4o",
        "text-embedding-3-small",
        "text-embedding-3-large",
        "omni-moderation-latest",
    ):
        assert expected in ids
    model = await upstream.client.models.retrieve("gpt-4o")
    assert model.id == "gpt-4o" and model.object == "model"
    with pytest.raises(openai.NotFoundError) as caught:
        await upstream.client.models.retrieve("no-such-model")
    assert caught.value.code == "model_not_found"


async def test_fail_next_500_then_recovers(upstream: Upstream) -> None:
    upstream.fake.fail_next = 2
    for _ in range(2):
        with pytest.raises(openai.InternalServerError) as caught:
            await upstream.client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        assert caught.value.status_code == 500
        assert caught.value.type == "server_error"
    answer = await upstream.client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert answer.choices[0].message.content
    assert upstream.fake.fail_next == 0
    assert upstream.fake.calls["/v1/chat/completions"] == 3


async def test_rate_limit_with_retry_after(upstream: Upstream) -> None:
    upstream.fake.fail_next = 1
    upstream.fake.fail_status = 429
    upstream.fake.fail_retry_after = "7"
    with pytest.raises(openai.RateLimitError) as caught:
        await upstream.client.embeddings.create(model="text-embedding-3-small", input="x")
    assert caught.value.response.headers["retry-after"] == "7"
    assert caught.value.code == "rate_limit_exceeded"


async def test_auth(upstream: Upstream, http: aiohttp.ClientSession) -> None:
    body = {"model": "text-embedding-3-small", "input": "x"}
    async with http.post(upstream.url + "/embeddings", json=body) as resp:
        assert resp.status == 401
        assert (await resp.json())["error"]["type"] == "invalid_request_error"
    upstream.fake.required_key = "sk-right"
    with pytest.raises(openai.AuthenticationError) as caught:
        await upstream.client.embeddings.create(model="text-embedding-3-small", input="x")
    assert caught.value.code == "invalid_api_key"
    assert "sk-test" not in caught.value.message
    right = openai.AsyncOpenAI(base_url=upstream.url, api_key="sk-right", max_retries=0)
    async with right:
        answer = await right.embeddings.create(model="text-embedding-3-small", input="x")
    assert len(answer.data) == 1


async def test_cut_stream_raises_in_the_sdk(
    upstream: Upstream, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR)
    upstream.fake.cut_stream_after = 3
    stream = await upstream.client.chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True
    )
    received = []
    with pytest.raises(openai.APIConnectionError):
        async for chunk in stream:
            received.append(chunk)
    assert len(received) == 3
    await _until(lambda: upstream.fake.in_flight == 0)
    assert caplog.records == []


async def test_gzip_knob(upstream: Upstream, http: aiohttp.ClientSession) -> None:
    upstream.fake.gzip = True
    body = {"model": "text-embedding-3-small", "input": "x", "encoding_format": "float"}
    headers = {**AUTH, "Accept-Encoding": "gzip"}
    async with http.post(upstream.url + "/embeddings", json=body, headers=headers) as resp:
        assert resp.headers["Content-Encoding"] == "gzip"
        assert len((await resp.json())["data"][0]["embedding"]) == 8
    identity = {**AUTH, "Accept-Encoding": "identity"}
    async with http.post(upstream.url + "/embeddings", json=body, headers=identity) as resp:
        assert "Content-Encoding" not in resp.headers
    answer = await upstream.client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert answer.choices[0].message.content
    assert "gzip" in upstream.fake.requests[-1].headers["accept-encoding"]


@pytest.mark.parametrize(
    ("header", "expected"),
    [("gzip", True), ("br, gzip;q=0.5", True), ("*", True), ("gzip;q=0", False), ("", False)],
)
def test_accept_encoding_parsing(header: str, expected: bool) -> None:
    assert accepts_gzip(header) is expected


async def test_latency_knob(upstream: Upstream) -> None:
    upstream.fake.latency_ms = 150
    started = time.perf_counter()
    await upstream.client.embeddings.create(model="text-embedding-3-small", input="x")
    assert time.perf_counter() - started >= 0.15


async def test_max_concurrency_bounds_in_flight(upstream: Upstream) -> None:
    upstream.fake.max_concurrency = 3
    upstream.fake.latency_ms = 20
    calls = [
        upstream.client.embeddings.create(model="text-embedding-3-small", input=f"x{i}")
        for i in range(20)
    ]
    answers = await asyncio.gather(*calls)
    assert len(answers) == 20
    assert upstream.fake.max_in_flight == 3
    assert upstream.fake.in_flight == 0


async def test_hang_until_cleared(upstream: Upstream) -> None:
    upstream.fake.hang = True
    call = asyncio.ensure_future(
        upstream.client.embeddings.create(model="text-embedding-3-small", input="x")
    )
    await _until(lambda: upstream.fake.in_flight == 1)
    await asyncio.sleep(0.05)
    assert not call.done()
    upstream.fake.hang = False
    answer = await asyncio.wait_for(call, 2)
    assert len(answer.data) == 1


async def test_hang_ends_when_client_leaves(
    upstream: Upstream, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR)
    upstream.fake.hang = True
    call = asyncio.ensure_future(
        upstream.client.embeddings.create(model="text-embedding-3-small", input="x")
    )
    await _until(lambda: upstream.fake.in_flight == 1)
    call.cancel()
    await _until(lambda: upstream.fake.in_flight == 0)
    assert upstream.fake.hang
    assert caplog.records == []


async def test_shutdown_releases_a_hung_request() -> None:
    fake = FakeUpstream(hang=True)
    runner, url = await start_fake_upstream(fake)
    async with openai.AsyncOpenAI(base_url=url, api_key="sk-test", max_retries=0) as client:
        call = asyncio.ensure_future(
            client.embeddings.create(model="text-embedding-3-small", input="x")
        )
        await _until(lambda: fake.in_flight == 1)
        started = time.monotonic()
        await runner.cleanup()
        assert time.monotonic() - started < 1.0
        with pytest.raises(openai.InternalServerError) as caught:
            await call
    assert caught.value.status_code == 503


async def test_client_disconnect_mid_stream_is_quiet(
    upstream: Upstream, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR)
    upstream.fake.chunk_delay_ms = 10
    body = {"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True}
    async with http.post(upstream.url + "/chat/completions", json=body, headers=AUTH) as resp:
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        assert (await resp.content.readline()).startswith(b"data: {")
        resp.close()
    await _until(lambda: upstream.fake.in_flight == 0)
    assert [r for r in caplog.records if r.name.startswith("aiohttp")] == []


async def test_errors_are_openai_shaped(upstream: Upstream, http: aiohttp.ClientSession) -> None:
    async with http.post(upstream.url + "/images/generations", json={}, headers=AUTH) as resp:
        assert resp.status == 404
        assert resp.headers["x-request-id"].startswith("req_")
        error = (await resp.json())["error"]
        assert error == {
            "message": "Invalid URL (POST /v1/images/generations)",
            "type": "invalid_request_error",
            "param": None,
            "code": "unknown_url",
        }
    url = upstream.url + "/chat/completions"
    async with http.post(url, data=b"{not json", headers=AUTH) as resp:
        assert resp.status == 400
        assert (await resp.json())["error"]["type"] == "invalid_request_error"
    async with http.post(url, json={"model": "m", "messages": []}, headers=AUTH) as resp:
        assert resp.status == 400
        assert (await resp.json())["error"]["param"] == "messages"


async def test_requests_are_recorded(upstream: Upstream) -> None:
    await upstream.client.embeddings.create(
        model="text-embedding-3-small", input="x", extra_headers={"X-Trace": "t1"}
    )
    recorded = upstream.fake.requests[-1]
    assert (recorded.method, recorded.path) == ("POST", "/v1/embeddings")
    # a fake never records a credential unless built with record_credentials=True
    assert recorded.headers["authorization"] == REDACTED
    assert recorded.headers["x-trace"] == "t1"
    assert recorded.body == {
        "model": "text-embedding-3-small",
        "input": "x",
        "encoding_format": "base64",
    }
    assert upstream.fake.total_calls == 1


def test_recorded_requests_are_bounded() -> None:
    fake = FakeUpstream()
    for i in range(MAX_RECORDED_REQUESTS + 50):
        fake.record("POST", "/v1/embeddings", {}, {"i": i})
    assert len(fake.requests) == MAX_RECORDED_REQUESTS
    assert fake.requests[-1].body == {"i": MAX_RECORDED_REQUESTS + 49}
    assert fake.total_calls == MAX_RECORDED_REQUESTS + 50


def test_reset_restores_knobs_and_clears_counters() -> None:
    fake = FakeUpstream(latency_ms=5, gzip=True, required_key="k")
    fake.record("GET", "/v1/models", {}, None)
    fake.embedding_inputs_per_call.append(3)
    fake.reset()
    assert fake.knobs() == FakeUpstream().knobs()
    assert fake.total_calls == 0 and fake.requests == []
    assert fake.embedding_inputs_per_call == [] and fake.max_in_flight == 0


async def test_control_endpoints(upstream: Upstream, http: aiohttp.ClientSession) -> None:
    root = upstream.root
    knobs = {"fail_next": 1, "fail_status": 503, "latency_ms": 1, "required_key": None}
    async with http.post(root + "/_fake/knobs", json=knobs) as resp:
        assert resp.status == 200
        assert (await resp.json())["knobs"]["fail_status"] == 503
    assert upstream.fake.fail_next == 1 and upstream.fake.latency_ms == 1
    with pytest.raises(openai.InternalServerError) as caught:
        await upstream.client.embeddings.create(model="text-embedding-3-small", input=["a", "b"])
    assert caught.value.status_code == 503
    await upstream.client.embeddings.create(model="text-embedding-3-small", input=["a", "b"])
    async with http.get(root + "/_fake/stats") as resp:
        stats = await resp.json()
    assert stats["calls"] == {"/v1/embeddings": 2}
    assert stats["total_calls"] == 2 and stats["max_in_flight"] == 1
    assert stats["embedding_inputs_per_call"] == [2]
    assert stats["last_request"]["body"]["input"] == ["a", "b"]
    assert stats["last_request"]["headers"]["authorization"] == REDACTED
    for bad in ({"no_such_knob": 1}, {"fail_next": "many"}, {"hang": 1}, {"fail_status": 200}):
        async with http.post(root + "/_fake/knobs", json=bad) as resp:
            assert resp.status == 400, bad
            assert "error" in await resp.json()
    async with http.post(root + "/_fake/reset") as resp:
        assert resp.status == 200
    assert upstream.fake.total_calls == 0 and upstream.fake.latency_ms == 0


async def test_standalone_process_prints_url_and_exits_cleanly_on_sigterm() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "proxy.fake_upstream",
        "--port",
        "0",
        "--latency-ms",
        "1",
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        cwd=REPO_ROOT,
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 10)).decode()
        assert line.startswith("fake upstream listening on http://127.0.0.1:")
        url = line.split()[-1]
        async with (
            openai.AsyncOpenAI(base_url=url, api_key="sk-test", max_retries=0) as client,
        ):
            models = await client.models.list()
        assert models.data
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 10) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def _until(condition: Callable[[], bool], within_s: float = 2.0) -> None:
    deadline = time.monotonic() + within_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)
