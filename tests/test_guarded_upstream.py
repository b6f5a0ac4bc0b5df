"""The one guarded upstream call (issue 18, item 1): gate, breaker, metrics and failure
accounting in one place, against the real stub upstream over loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator

import msgspec
import pytest
from prometheus_client import CollectorRegistry

from proxy.errors import http_status
from proxy.failures import BreakerOpen, ClientGone, UpstreamTimeout
from proxy.metrics import Metrics
from proxy.settings_load import load_settings
from proxy.upstream.breakers import BreakerBoard
from proxy.upstream.client import UpstreamClient
from proxy.upstream.exchange import UpstreamRequest
from proxy.upstream.gate import Priority, UpstreamGate
from proxy.upstream.guarded import GuardedUpstream
from tests.fixtures.sidecar import API_KEY, Stub

CHAT = "/v1/chat/completions"
HEADERS = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
GOOD = msgspec.json.encode(
    {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
)


def wanted() -> bool:
    return True


def chat(body: bytes = GOOD) -> UpstreamRequest:
    return UpstreamRequest("chat.completions", CHAT, HEADERS, body, Priority.NORMAL)


@pytest.fixture
async def guarded(stub: Stub) -> AsyncIterator[GuardedUpstream]:
    settings = load_settings({"UPSTREAM_BASE_URL": stub.url, "UPSTREAM_READ_TIMEOUT": "0.3"})
    client = UpstreamClient.open(settings.upstream)
    upstream = GuardedUpstream(
        client, UpstreamGate(2), BreakerBoard(stub.url, 2, 60), Metrics(CollectorRegistry())
    )
    yield upstream
    await client.close()


def upstream_calls(upstream: GuardedUpstream, status: int) -> float:
    value = upstream.metrics.registry.get_sample_value(
        "sidecache_upstream_requests_total", {"endpoint": "chat.completions", "status": str(status)}
    )
    return value or 0.0


async def test_an_answer_is_read_whole_and_observed(guarded: GuardedUpstream, stub: Stub) -> None:
    reply = await guarded.call(chat(), wanted)
    assert reply.status == 200
    assert msgspec.json.decode(reply.body)["object"] == "chat.completion"
    assert reply.upstream_ms > 0
    assert upstream_calls(guarded, 200) == 1
    assert guarded.breakers.breakers["chat"].failures == 0
    assert guarded.gate.active == 0


async def test_a_5xx_is_relayed_and_counts_against_the_breaker(
    guarded: GuardedUpstream, stub: Stub
) -> None:
    stub.fake.fail_next, stub.fake.fail_status = 1, 502
    reply = await guarded.call(chat(), wanted)
    assert reply.status == 502
    assert "error" in msgspec.json.decode(reply.body)  # the upstream's own error, as it is
    assert guarded.breakers.breakers["chat"].failures == 1
    assert upstream_calls(guarded, 502) == 1


async def test_a_4xx_is_relayed_and_does_not_count(guarded: GuardedUpstream, stub: Stub) -> None:
    reply = await guarded.call(chat(b'{"model": "gpt-4o-mini"}'), wanted)  # no messages
    assert reply.status == 400
    assert guarded.breakers.breakers["chat"].failures == 0
    assert upstream_calls(guarded, 400) == 1


async def test_an_open_breaker_refuses_before_any_call(
    guarded: GuardedUpstream, stub: Stub
) -> None:
    stub.fake.fail_next = 2
    for _ in range(2):
        assert (await guarded.call(chat(), wanted)).status == 500
    calls = stub.calls
    with pytest.raises(BreakerOpen) as refused:
        await guarded.call(chat(), wanted)
    assert http_status(refused.value) == 503
    assert refused.value.retry_after_s is not None and refused.value.retry_after_s > 0
    assert stub.calls == calls  # nothing reached the upstream
    assert guarded.gate.active == 0


async def test_a_timeout_is_an_upstream_timeout_and_counts(
    guarded: GuardedUpstream, stub: Stub
) -> None:
    stub.fake.latency_ms = 1000  # past the 0.3 s read timeout
    with pytest.raises(UpstreamTimeout) as failed:
        await guarded.call(chat(), wanted)
    assert isinstance(failed.value, TimeoutError)  # catchable as the stdlib's, as httpx does
    assert http_status(failed.value) == 504
    assert guarded.breakers.breakers["chat"].failures == 1


async def test_a_body_with_nobody_left_to_send_for_costs_nothing(
    guarded: GuardedUpstream, stub: Stub
) -> None:
    def nobody() -> bytes:
        raise ClientGone()

    request = UpstreamRequest("chat.completions", CHAT, HEADERS, nobody, Priority.NORMAL)
    with pytest.raises(ClientGone):
        await guarded.call(request, wanted)
    assert stub.calls == 0
    assert guarded.breakers.breakers["chat"].failures == 0  # leaving is no upstream failure
    assert guarded.gate.active == 0
