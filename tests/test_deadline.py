"""Issue 19, items 6, 8 and 11: a trickling upstream cannot hold the upstream slots forever
(total deadline, bounded slot wait, abandoned calls cancelled), one tenant cannot open the
shared breaker for everyone, a decoded request body goes upstream without its encoding, and
an answer with no choices is never cached.

The stub's `drip_ms` knob answers 200 and then trickles filler bytes forever (each well inside
the read timeout), `hang` holds a request before its headers; both count the requests whose
client closed the connection (`abandoned`), which is how a test sees a call cancelled upstream.
"""

from __future__ import annotations

import asyncio
import gzip
import json

import openai
import pytest

from tests.fixtures.sidecar import SidecarFactory, Stub
from tests.test_single_flight import WAIT_S, ask, messages, until

CHAT = "/v1/chat/completions"


def chat_body(question: str = "What is a deadline?") -> dict[str, object]:
    return {"model": "gpt-4o-mini", "messages": messages(question)}


# -- item 11: choices: [] ----------------------------------------------------------------------


def test_an_answer_without_choices_is_relayed_but_never_cached(
    make_sidecar: SidecarFactory, stub: Stub
) -> None:
    sidecar = make_sidecar()
    stub.fake.empty_choices = True
    first = sidecar.request("POST", CHAT, chat_body())
    assert first.status == 200 and first.json()["choices"] == []
    second = sidecar.request("POST", CHAT, chat_body())
    assert second.headers["x-cache"] == "MISS"  # not served from a stored partial answer
    assert stub.calls == 2


# -- item 8: Content-Encoding of a decoded request body -----------------------------------------


@pytest.mark.parametrize("path", [CHAT, "/v1/not-understood"])
def test_a_gzip_request_body_goes_upstream_decoded_without_its_encoding(
    make_sidecar: SidecarFactory, stub: Stub, path: str
) -> None:
    """aiohttp decodes a request body sent with Content-Encoding, so what goes upstream is the
    decoded body: its encoding header must not go with it (understood and pass-through)."""
    sidecar = make_sidecar()
    body = chat_body("Compressed question")
    answer = sidecar.request(
        "POST",
        path,
        gzip.compress(json.dumps(body).encode()),
        {"Content-Type": "application/json", "Content-Encoding": "gzip"},
    )
    received = stub.fake.requests[-1]
    assert "content-encoding" not in received.headers
    assert received.body == body  # the stub could read it
    assert answer.status == (200 if path == CHAT else 404)


# -- item 8: one tenant's 5xx do not open the breaker for everyone ------------------------------

MANAGED = {
    "UPSTREAM_API_KEY": "sk-upstream-0123456789",
    "SIDECAR_KEYS": "sk-side-alpha=alpha,sk-side-bravo=bravo",
    "BREAKER_FAIL_MAX": "2",
}


async def test_one_tenants_5xx_do_not_open_the_breaker_for_another(
    make_sidecar: SidecarFactory, stub: Stub
) -> None:
    sidecar = make_sidecar(**MANAGED)
    alpha, bravo = sidecar.aclient("sk-side-alpha"), sidecar.aclient("sk-side-bravo")
    assert (await ask(bravo, question="bravo before")).cache == "MISS"
    stub.fake.fail_next = 3
    for number in range(3):
        with pytest.raises(openai.InternalServerError):  # the upstream's 500, relayed
            await ask(alpha, question=f"alpha's odd request {number}")
    assert sidecar.runtime.breakers.for_endpoint("chat.completions").state == "closed"
    assert (await ask(bravo, question="bravo after")).cache == "MISS"


async def test_5xx_seen_by_two_tenants_open_the_breaker(
    make_sidecar: SidecarFactory, stub: Stub
) -> None:
    sidecar = make_sidecar(**MANAGED)
    alpha, bravo = sidecar.aclient("sk-side-alpha"), sidecar.aclient("sk-side-bravo")
    stub.fake.fail_next = 2
    for number, client in enumerate((alpha, bravo)):
        with pytest.raises(openai.InternalServerError):
            await ask(client, question=f"failing {number}")
    with pytest.raises(openai.APIStatusError) as refused:
        await ask(bravo, question="refused")
    assert refused.value.status_code == 503
    assert refused.value.response.headers["x-cache"] != "HIT"


def test_a_lone_tenants_5xx_still_open_the_breaker(
    make_sidecar: SidecarFactory, stub: Stub
) -> None:
    """With nobody else calling (a single-tenant deployment), an upstream answering 5xx still
    opens the breaker: there is no other tenant to protect from this one."""
    sidecar = make_sidecar(BREAKER_FAIL_MAX="2")
    stub.fake.fail_next = 2
    for number in range(2):
        assert sidecar.request("POST", CHAT, chat_body(f"failing {number}")).status == 500
    refused = sidecar.request("POST", CHAT, chat_body("refused"))
    assert refused.status == 503 and refused.json()["error"]["code"] == "circuit_open"


# -- item 6: the total deadline, the bounded slot wait, abandoned calls --------------------------


async def test_a_drip_holding_every_slot_refuses_a_fresh_miss_with_retry_after(
    make_sidecar: SidecarFactory, stub: Stub
) -> None:
    sidecar = make_sidecar(UPSTREAM_MAX_IN_FLIGHT="1", UPSTREAM_QUEUE_TIMEOUT="0.2")
    stub.fake.drip_ms = 20
    client = sidecar.aclient()
    held = asyncio.ensure_future(ask(client, question="held by the drip"))
    try:
        await until(lambda: stub.fake.in_flight == 1, "the one slot is held by a drip")
        with pytest.raises(openai.APIStatusError) as refused:
            await asyncio.wait_for(ask(client, question="a fresh miss"), WAIT_S)
        assert refused.value.status_code == 503
        assert int(refused.value.response.headers["retry-after"]) >= 1
        assert refused.value.response.json()["error"]["code"] == "upstream_busy"
        assert stub.calls == 1  # the refused miss never reached the upstream
    finally:
        held.cancel()
        stub.fake.drip_ms = None
        await asyncio.gather(held, return_exceptions=True)


async def test_the_total_timeout_bounds_an_answer_that_keeps_trickling(
    make_sidecar: SidecarFactory, stub: Stub
) -> None:
    sidecar = make_sidecar(UPSTREAM_TOTAL_TIMEOUT="0.5")
    stub.fake.drip_ms = 20
    with pytest.raises(openai.APIStatusError) as timed_out:
        await asyncio.wait_for(ask(sidecar.aclient(), question="never ends"), WAIT_S)
    assert timed_out.value.status_code == 504
    await until(lambda: stub.fake.abandoned == 1, "the upstream connection closed")
    assert sidecar.runtime.gate.active == 0


async def test_the_total_timeout_bounds_a_stream_that_keeps_trickling(
    make_sidecar: SidecarFactory, stub: Stub
) -> None:
    """The stream started (200 and its headers went out), so the client gets the stream
    failure as its last event, and the call counts against the breaker."""
    sidecar = make_sidecar(UPSTREAM_TOTAL_TIMEOUT="0.5")
    stub.fake.drip_ms = 20
    with pytest.raises(openai.APIError) as failed:
        await asyncio.wait_for(ask(sidecar.aclient(), stream=True, question="never ends"), WAIT_S)
    assert "stream" in str(failed.value)
    await until(lambda: stub.fake.abandoned == 1, "the upstream connection closed")
    assert sidecar.runtime.gate.active == 0
    assert sidecar.runtime.breakers.for_endpoint("chat.completions").failures == 1


async def test_a_no_store_stream_whose_client_leaves_during_a_drip_is_cancelled(
    make_sidecar: SidecarFactory, stub: Stub
) -> None:
    """Nothing is to be stored and nobody waits any more: the upstream call is cancelled even
    though the upstream sends nothing that would let the relay notice."""
    sidecar = make_sidecar(UPSTREAM_MAX_IN_FLIGHT="1")
    stub.fake.drip_ms = 600_000  # the headers, one filler byte, then silence
    client = sidecar.aclient()
    async with client.chat.completions.with_streaming_response.create(
        model="gpt-4o-mini",
        messages=messages("no-store and gone"),
        stream=True,
        extra_headers={"Cache-Control": "no-store"},
    ) as raw:
        assert raw.headers["x-cache"] == "BYPASS"
    # The client left (its connection closed when the block ended).
    await until(lambda: stub.fake.abandoned == 1, "the upstream saw its connection closed")
    await until(lambda: sidecar.runtime.gate.active == 0, "the gate slot freed")


async def test_a_no_store_call_whose_client_leaves_before_any_answer_is_cancelled(
    make_sidecar: SidecarFactory, stub: Stub
) -> None:
    sidecar = make_sidecar(UPSTREAM_MAX_IN_FLIGHT="1")
    stub.fake.hang = True
    headers = {"Cache-Control": "no-store"}
    gone = asyncio.ensure_future(ask(sidecar.aclient(), question="gone", headers=headers))
    await until(lambda: stub.fake.in_flight == 1, "the call reached the upstream")
    gone.cancel()
    await asyncio.gather(gone, return_exceptions=True)
    await until(lambda: stub.fake.abandoned == 1, "the upstream saw its connection closed")
    await until(lambda: sidecar.runtime.gate.active == 0, "the gate slot freed")


async def test_a_call_the_cache_still_wants_is_not_cancelled_when_its_client_leaves(
    make_sidecar: SidecarFactory, stub: Stub
) -> None:
    sidecar = make_sidecar()
    stub.fake.hang = True
    gone = asyncio.ensure_future(ask(sidecar.aclient(), question="stored for later"))
    await until(lambda: stub.fake.in_flight == 1, "the call reached the upstream")
    gone.cancel()
    await asyncio.gather(gone, return_exceptions=True)
    await asyncio.sleep(0.5)  # a watcher would have cancelled it by now (it polls faster)
    stub.fake.hang = False
    await until(lambda: stub.calls == 1 and stub.fake.in_flight == 0, "the call landed")
    assert (await ask(sidecar.aclient(), question="stored for later")).cache == "HIT"
    assert stub.fake.abandoned == 0
