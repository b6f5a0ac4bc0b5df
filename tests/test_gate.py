"""The upstream gate (issue 3, item 4): at most `UPSTREAM_MAX_IN_FLIGHT` upstream calls at once;
waiting work goes by `X-Priority` (high, normal, low), then first come first served; a waiting
request whose client has gone never reaches the upstream."""

from __future__ import annotations

import asyncio

import msgspec
import openai
import pytest

from proxy.failures import UpstreamBusy
from proxy.upstream.gate import Priority, UpstreamGate
from tests.fixtures.sidecar import API_KEY, SidecarFactory, Stub
from tests.test_single_flight import WAIT_S, ask, messages, until, until_count


def asked_questions(stub: Stub) -> list[str]:
    """The user message of every chat request the stub received, in arrival order."""
    bodies = [r.body for r in stub.fake.requests]
    return [b["messages"][-1]["content"] for b in bodies if isinstance(b, dict)]


async def test_no_more_than_the_limit_in_flight(make_sidecar: SidecarFactory, stub: Stub) -> None:
    sidecar = make_sidecar(UPSTREAM_MAX_IN_FLIGHT="2")
    stub.fake.latency_ms = 40
    client = sidecar.aclient()
    answers = await asyncio.wait_for(
        asyncio.gather(*(ask(client, question=f"Question number {i}") for i in range(20))),
        WAIT_S,
    )
    assert {a.cache for a in answers} == {"MISS"}
    assert stub.calls == 20
    assert stub.fake.max_in_flight == 2  # the limit was used, and never exceeded
    assert sidecar.runtime.gate.active == 0
    assert sidecar.runtime.gate.queued == 0


async def test_waiting_work_goes_by_priority_then_fifo(
    make_sidecar: SidecarFactory, stub: Stub
) -> None:
    sidecar = make_sidecar(UPSTREAM_MAX_IN_FLIGHT="1")
    gate = sidecar.runtime.gate
    client = sidecar.aclient()
    stub.fake.hang = True
    tasks = [asyncio.ensure_future(ask(client, question="busy"))]
    await until(lambda: stub.fake.in_flight == 1, "the gate's one slot is taken")
    order = ["low", "normal", "high", "low", "normal", "high", None]
    for number, priority in enumerate(order):
        headers = {"X-Priority": priority.upper()} if priority else {}  # case does not matter
        question = f"{priority or 'default'} {number}"
        tasks.append(asyncio.ensure_future(ask(client, question=question, headers=headers)))
        await until_count(lambda: gate.queued, number + 1, f"queued with {question}")
    stub.fake.hang = False
    await asyncio.wait_for(asyncio.gather(*tasks), WAIT_S)
    assert asked_questions(stub) == [
        "busy",
        "high 2",
        "high 5",
        "normal 1",
        "normal 4",
        "default 6",  # no header: normal
        "low 0",
        "low 3",
    ]
    assert stub.fake.max_in_flight == 1


async def test_an_invalid_priority_is_a_400_naming_the_header(
    make_sidecar: SidecarFactory, stub: Stub
) -> None:
    client = make_sidecar().aclient()
    try:
        await ask(client, headers={"X-Priority": "urgent"})
    except openai.BadRequestError as exc:
        assert exc.status_code == 400
        assert exc.param == "X-Priority"
        assert "X-Priority" in exc.message and "high, normal, low" in exc.message
        assert "'urgent'" in exc.message
    else:
        raise AssertionError("an invalid X-Priority was accepted")
    assert stub.calls == 0


async def test_a_waiting_request_whose_client_left_is_dropped(
    make_sidecar: SidecarFactory, stub: Stub
) -> None:
    sidecar = make_sidecar(UPSTREAM_MAX_IN_FLIGHT="1")
    gate = sidecar.runtime.gate
    client = sidecar.aclient()
    stub.fake.hang = True
    busy = asyncio.ensure_future(ask(client, question="busy"))
    await until(lambda: stub.fake.in_flight == 1, "the gate's one slot is taken")

    host, port = sidecar.root.removeprefix("http://").split(":")
    _, writer = await asyncio.open_connection(host, int(port))
    body = msgspec.json.encode({"model": "gpt-4o-mini", "messages": messages("gone")})
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: sidecar\r\nX-Priority: high\r\n"
        + f"Authorization: Bearer {API_KEY}\r\nContent-Type: application/json\r\n".encode()
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    await writer.drain()
    await until(lambda: gate.queued == 1, "the raw request queued")
    writer.close()
    await writer.wait_closed()
    stayed = asyncio.ensure_future(ask(client, question="stayed"))
    await until(lambda: gate.queued == 2, "a second request queued behind it")

    stub.fake.hang = False
    answers = await asyncio.wait_for(asyncio.gather(busy, stayed), WAIT_S)
    assert [a.cache for a in answers] == ["MISS", "MISS"]
    assert asked_questions(stub) == ["busy", "stayed"]  # "gone" never reached the upstream
    await until(lambda: gate.queued == 0 and gate.active == 0, "the gate drained")
    assert not sidecar.runtime.flights.flights  # and its flight landed


async def test_a_slot_wait_is_bounded_but_low_priority_may_wait_longer() -> None:
    """Issue 19, item 6: beyond UPSTREAM_QUEUE_TIMEOUT a request is refused (503 + Retry-After)
    instead of queueing behind calls that may never end; warming (low priority, nobody waiting
    on it) waits up to its own, longer bound and still gets its turn."""
    gate = UpstreamGate(1, queue_timeout_s=0.05, low_queue_timeout_s=WAIT_S)
    held = gate.slot(Priority.NORMAL, lambda: True)
    await held.__aenter__()

    async def use_slot(priority: Priority) -> str:
        async with gate.slot(priority, lambda: True):
            return priority.name

    warming = asyncio.ensure_future(use_slot(Priority.LOW))
    await until_count(lambda: gate.queued, 1, "warming queued")
    with pytest.raises(UpstreamBusy) as busy:
        await asyncio.wait_for(use_slot(Priority.HIGH), WAIT_S)
    assert busy.value.retry_after_s == 1
    assert not warming.done()  # past the normal bound, still waiting
    await held.__aexit__(None, None, None)
    assert await asyncio.wait_for(warming, WAIT_S) == "LOW"
    assert (gate.active, gate.queued) == (0, 0)
