"""Circuit breakers (issue 3, items 5 and 6): 5xx, timeouts and connection errors open a
breaker, 4xx never do; while open, misses get a fast OpenAI-shaped 503 with Retry-After and hits
are still served; half-open lets exactly one probe through; state is exported as metrics and
resettable. Upstream 429s reach the client unchanged, with no hidden retries."""

from __future__ import annotations

import asyncio
import re
import time

import msgspec
import openai
import pytest

from proxy.upstream.breakers import BreakerBoard
from tests.fixtures.server_base import free_port
from tests.fixtures.sidecar import API_KEY, LoopThread, Sidecar, SidecarFactory, Stub
from tests.test_single_flight import WAIT_S, Asked, ask, the_flight, until

FAST_S = 0.5  # "within milliseconds", with a generous margin for a loaded test machine
OPEN, HALF_OPEN, CLOSED = 2.0, 1.0, 0.0


def metric(sidecar: Sidecar, name: str, breaker: str | None = None) -> float:
    """One sample of the admin port's /metrics (the sample labelled `breaker`, if given)."""
    text = sidecar.request("GET", "/metrics", admin=True).body.decode()
    labels = rf'\{{breaker="{breaker}"\}}' if breaker else ""
    found = re.search(rf"^{name}{labels} (\S+)$", text, re.MULTILINE)
    assert found is not None, f"{name} {breaker or ''} not in /metrics"
    return float(found.group(1))


def breaker_sidecar(make_sidecar: SidecarFactory, reset_s: str = "30", **env: str) -> Sidecar:
    return make_sidecar(BREAKER_FAIL_MAX="3", BREAKER_RESET_S=reset_s, **env)


async def fail(client: openai.AsyncOpenAI, question: str) -> openai.APIStatusError:
    with pytest.raises(openai.APIStatusError) as caught:
        await ask(client, question=question)
    return caught.value


async def open_chat_breaker(sidecar: Sidecar, stub: Stub, status: int = 500) -> None:
    client = sidecar.aclient()
    stub.fake.fail_next, stub.fake.fail_status = 3, status
    for n in range(3):
        assert (await fail(client, f"failing {n}")).status_code == status
    assert sidecar.runtime.breakers.breakers["chat"].state == "open"


def reset(loop_thread: LoopThread, board: BreakerBoard, name: str | None) -> dict[str, str]:
    """The programmatic reset the admin port uses, run on the sidecar's own loop."""

    async def on_loop() -> dict[str, str]:
        return board.reset(name)

    return loop_thread.run(on_loop())


async def test_5xx_open_the_breaker_misses_fail_fast_and_hits_still_serve(
    make_sidecar: SidecarFactory, stub: Stub, loop_thread: LoopThread
) -> None:
    sidecar = breaker_sidecar(make_sidecar)
    client = sidecar.aclient()
    stored = await ask(client, question="cached before the outage")
    assert metric(sidecar, "sidecache_breaker_state", "chat") == CLOSED
    await open_chat_breaker(sidecar, stub)
    calls = stub.calls
    assert metric(sidecar, "sidecache_breaker_state", "chat") == OPEN
    assert metric(sidecar, "sidecache_breaker_opened_total", "chat") == 1
    assert metric(sidecar, "sidecache_breaker_failures", "chat") == 3
    assert metric(sidecar, "sidecache_breaker_transitions_total") == 1

    for stream in (False, True):
        started = time.perf_counter()
        with pytest.raises(openai.InternalServerError) as caught:
            await ask(client, question="a miss while open", stream=stream)
        assert time.perf_counter() - started < FAST_S
        error = caught.value
        assert error.status_code == 503
        assert error.code == "circuit_open"
        assert error.type == "service_unavailable"
        assert "Cached answers are still served" in error.message
        assert 1 <= int(error.response.headers["retry-after"]) <= 30
    assert stub.calls == calls  # nothing reached the upstream

    hit = await ask(client, question="cached before the outage")
    assert (hit.cache, hit.text) == ("HIT", stored.text)
    # Other endpoints have breakers of their own.
    assert metric(sidecar, "sidecache_breaker_state", "embeddings") == CLOSED
    vectors = await client.embeddings.create(model="text-embedding-3-small", input="still up")
    assert len(vectors.data) == 1
    assert stub.calls == calls + 1

    states = reset(loop_thread, sidecar.runtime.breakers, None)
    assert states == dict.fromkeys(("chat", "embeddings", "moderation", "other"), "closed")
    assert metric(sidecar, "sidecache_breaker_state", "chat") == CLOSED
    assert metric(sidecar, "sidecache_breaker_failures", "chat") == 0
    assert metric(sidecar, "sidecache_breaker_transitions_total") == 2  # the closed ones: none
    assert (await ask(client, question="after the reset")).cache == "MISS"


@pytest.mark.parametrize("status", [400, 404, 429])
async def test_4xx_never_open_the_breaker(
    make_sidecar: SidecarFactory, stub: Stub, status: int
) -> None:
    sidecar = breaker_sidecar(make_sidecar)
    client = sidecar.aclient()
    stub.fake.fail_next, stub.fake.fail_status = 6, status
    for n in range(6):
        assert (await fail(client, f"rejected {n}")).status_code == status
    assert stub.calls == 6
    assert sidecar.runtime.breakers.breakers["chat"].state == "closed"
    assert metric(sidecar, "sidecache_breaker_state", "chat") == CLOSED
    assert metric(sidecar, "sidecache_breaker_opened_total", "chat") == 0
    assert (await ask(client, question="accepted")).cache == "MISS"


async def test_timeouts_open_the_breaker(make_sidecar: SidecarFactory, stub: Stub) -> None:
    sidecar = breaker_sidecar(make_sidecar, UPSTREAM_READ_TIMEOUT="0.2")
    client = sidecar.aclient()
    stub.fake.hang = True
    for n in range(3):
        error = await fail(client, f"slow {n}")
        assert (error.status_code, error.code) == (504, "upstream_timeout")
    error = await fail(client, "slow again")
    assert (error.status_code, error.code) == (503, "circuit_open")
    assert stub.calls == 3


async def test_connection_errors_open_the_breaker(make_sidecar: SidecarFactory) -> None:
    closed_port = f"http://127.0.0.1:{free_port()}/v1"
    # One try per request (retries count too: tests/test_retries.py), so each is one failure.
    sidecar = breaker_sidecar(make_sidecar, UPSTREAM_BASE_URL=closed_port, UPSTREAM_RETRIES="0")
    client = sidecar.aclient()
    for n in range(3):
        error = await fail(client, f"unreachable {n}")
        assert (error.status_code, error.code) == (502, "upstream_unreachable")
    error = await fail(client, "unreachable again")
    assert (error.status_code, error.code) == (503, "circuit_open")
    assert metric(sidecar, "sidecache_breaker_state", "chat") == OPEN


async def test_half_open_lets_one_probe_through(make_sidecar: SidecarFactory, stub: Stub) -> None:
    # One upstream slot: requests during the probe must not queue behind it either.
    sidecar = breaker_sidecar(make_sidecar, reset_s="1", UPSTREAM_MAX_IN_FLIGHT="1")
    client = sidecar.aclient()
    await open_chat_breaker(sidecar, stub)
    assert (await fail(client, "too early")).status_code == 503
    await asyncio.sleep(1.05)  # the reset timeout

    # A failing probe opens it again at once.
    stub.fake.fail_next = 1
    assert (await fail(client, "failing probe")).status_code == 500
    assert (await fail(client, "right after")).code == "circuit_open"
    assert metric(sidecar, "sidecache_breaker_opened_total", "chat") == 2
    await asyncio.sleep(1.05)

    # One probe reaches the upstream; requests meanwhile are refused, not queued behind it.
    calls = stub.calls
    stub.fake.hang = True
    probe = asyncio.ensure_future(ask(client, question="the probe"))
    await until(lambda: stub.fake.in_flight == 1, "the probe reached the upstream")
    assert metric(sidecar, "sidecache_breaker_state", "chat") == HALF_OPEN
    during = await asyncio.wait_for(
        asyncio.gather(*(fail(client, f"during the probe {n}") for n in range(5))), WAIT_S
    )
    assert {(e.status_code, e.code) for e in during} == {(503, "circuit_open")}
    assert all(e.response.headers["retry-after"] == "1" for e in during)
    assert stub.calls == calls + 1
    stub.fake.hang = False
    assert (await asyncio.wait_for(probe, WAIT_S)).cache == "MISS"

    assert metric(sidecar, "sidecache_breaker_state", "chat") == CLOSED
    answers = await asyncio.gather(*(ask(client, question=f"after {n}") for n in range(5)))
    assert {a.cache for a in answers} == {"MISS"}
    assert stub.calls == calls + 6
    # closed->open, open->half-open, half-open->open, open->half-open, half-open->closed
    assert metric(sidecar, "sidecache_breaker_transitions_total") == 5


async def test_clients_leaving_a_stream_are_not_upstream_failures(
    make_sidecar: SidecarFactory, stub: Stub
) -> None:
    """A no-store stream nobody reads any more is stopped; that is not the upstream failing."""
    sidecar = breaker_sidecar(make_sidecar)
    stub.fake.chunk_delay_ms = 20
    host, port = sidecar.root.removeprefix("http://").split(":")
    body = msgspec.json.encode(
        {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    )
    for _ in range(4):
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: sidecar\r\nCache-Control: no-store\r\n"
            + f"Authorization: Bearer {API_KEY}\r\nContent-Type: application/json\r\n".encode()
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        received = b""
        while b"data: " not in received:
            received += await asyncio.wait_for(reader.read(256), WAIT_S)
        writer.close()
        await writer.wait_closed()
        await until(lambda: stub.fake.in_flight == 0, "the upstream stream was stopped")
    assert sidecar.runtime.breakers.breakers["chat"].state == "closed"
    assert metric(sidecar, "sidecache_breaker_failures", "chat") == 0
    assert the_flight(sidecar) is None


async def test_429_passes_through_unchanged_without_retries(
    make_sidecar: SidecarFactory, stub: Stub
) -> None:
    sidecar = make_sidecar()
    stub.fake.fail_next, stub.fake.fail_status, stub.fake.fail_retry_after = 1, 429, "7"
    raw = sidecar.request(
        "POST",
        "/v1/chat/completions",
        {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "limited"}]},
    )
    assert raw.status == 429
    assert raw.headers["retry-after"] == "7"
    assert raw.json()["error"]["code"] == "rate_limit_exceeded"
    assert "injected by the fake upstream" in raw.json()["error"]["message"]
    assert stub.calls == 1  # no hidden retry

    stub.fake.fail_next = 1
    client = sidecar.aclient()
    with pytest.raises(openai.RateLimitError) as caught:
        await ask(client, question="limited", stream=True)
    assert caught.value.response.headers["retry-after"] == "7"
    assert stub.calls == 2
    # The SDK's own retries honour the Retry-After the sidecar passed on (shortened here).
    stub.fake.fail_next, stub.fake.fail_retry_after = 1, "0"
    retrying = openai.AsyncOpenAI(base_url=sidecar.url, api_key=API_KEY, max_retries=1)
    answered: Asked = await asyncio.wait_for(ask(retrying, question="limited"), WAIT_S)
    assert answered.cache == "MISS"
    assert stub.calls == 4
    assert sidecar.runtime.breakers.breakers["chat"].state == "closed"
