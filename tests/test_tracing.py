"""Traces (README "Traces"): a real sidecar exporting to a real OTLP/HTTP endpoint started here,
the protobuf decoded and its spans checked; with no OTEL_* variables, no tracing at all."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from proxy.tracing import Traced, open_tracer
from tests.fixtures.otlp import OtlpReceiver, ReceivedSpan
from tests.fixtures.sidecar import LoopThread, Sidecar, SidecarFactory, Stub, serve_double

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{CLIENT_SPAN}-01"
SERVER, CLIENT_KIND = 2, 3  # the protobuf's SPAN_KIND_SERVER, SPAN_KIND_CLIENT
QUESTION = "What is the secret word of the lighthouse keeper?"
OTEL_VARIABLES = (
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT",
    "OTEL_SERVICE_NAME",
)


@pytest.fixture
def receiver(loop_thread: LoopThread) -> Iterator[tuple[OtlpReceiver, str]]:
    otlp = OtlpReceiver()
    runner, url = loop_thread.run(serve_double(otlp.app()))
    yield otlp, url.removesuffix("/v1")
    loop_thread.run(runner.cleanup())


@pytest.fixture
def traced(
    make_sidecar: SidecarFactory,
    receiver: tuple[OtlpReceiver, str],
    monkeypatch: pytest.MonkeyPatch,
) -> SidecarFactory:
    """`traced(**env)`: a sidecar exporting its spans to `receiver` (the SDK reads os.environ)."""
    for name in OTEL_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver[1])
    return make_sidecar


def _ask(sidecar: Sidecar) -> str:
    client = sidecar.client(traceparent=TRACEPARENT)
    answer = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": QUESTION}]
    )
    return answer.choices[0].message.content or ""


def _exported(sidecar: Sidecar, otlp: OtlpReceiver) -> list[ReceivedSpan]:
    tracer = sidecar.runtime.tracer
    assert isinstance(tracer, Traced)
    assert tracer.flush()
    return otlp.spans


def _named(spans: list[ReceivedSpan], name: str) -> list[ReceivedSpan]:
    return [span for span in spans if span.name == name]


def test_miss_and_hit_are_server_spans_continuing_the_clients_trace(
    traced: SidecarFactory, receiver: tuple[OtlpReceiver, str], stub: Stub
) -> None:
    sidecar = traced()
    _ask(sidecar)
    _ask(sidecar)
    spans = _exported(sidecar, receiver[0])
    servers = [span for span in spans if span.kind == SERVER]
    assert len(servers) == 2
    miss, hit = servers
    for span in servers:
        assert span.name == "chat gpt-4o-mini"
        assert span.trace_id == TRACE_ID and span.parent_id == CLIENT_SPAN
        assert span.service == "sidecache"
        attributes = span.attributes
        assert attributes["gen_ai.operation.name"] == "chat"
        assert attributes["gen_ai.provider.name"] == "openai"
        assert attributes["gen_ai.request.model"] == "gpt-4o-mini"
        assert attributes["gen_ai.usage.input_tokens"] > 0
        assert attributes["gen_ai.usage.output_tokens"] > 0
        assert attributes["http.response.status_code"] == 200
        assert len(attributes["sidecache.tenant"]) > 8
    assert miss.attributes["sidecache.cache"] == "MISS"
    assert miss.attributes["sidecache.cost_usd"] > 0
    assert hit.attributes["sidecache.cache"] == "HIT"
    assert hit.attributes["sidecache.cache.match"] == "exact"
    assert hit.attributes["sidecache.cost_usd"] == 0
    assert hit.attributes["sidecache.saved_cost_usd"] == miss.attributes["sidecache.cost_usd"]
    # Children: each request's cache lookup; the miss's upstream call.
    lookups = _named(spans, "sidecache.cache.lookup")
    assert sorted(span.parent_id for span in lookups) == sorted([miss.span_id, hit.span_id])
    (upstream,) = _named(spans, "sidecache.upstream")
    assert upstream.parent_id == miss.span_id and upstream.trace_id == TRACE_ID
    assert upstream.kind == CLIENT_KIND
    assert upstream.attributes["sidecache.endpoint"] == "chat.completions"
    # What reached the upstream continues the trace under the sidecar's upstream span.
    (sent,) = [r for r in stub.fake.requests if r.path == "/v1/chat/completions"]
    assert sent.headers["traceparent"] == f"00-{TRACE_ID}-{upstream.span_id}-01"
    # No message content by default.
    for span in spans:
        assert not [name for name, _ in span.events if name.startswith("gen_ai.")]
        assert QUESTION not in repr(span.attributes)


def test_message_content_only_with_the_capture_variable(
    traced: SidecarFactory, receiver: tuple[OtlpReceiver, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "true")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "gateway-a")
    sidecar = traced()
    said = _ask(sidecar)
    (server,) = [span for span in _exported(sidecar, receiver[0]) if span.kind == SERVER]
    assert server.service == "gateway-a"
    events = dict(server.events)
    assert events["gen_ai.user.message"]["content"] == QUESTION
    assert said and events["gen_ai.choice"]["content"] == said


def test_anthropic_messages_name_their_provider(
    traced: SidecarFactory, receiver: tuple[OtlpReceiver, str]
) -> None:
    sidecar = traced()
    body = {
        "model": "claude-sonnet-4-5",
        "max_tokens": 50,
        "messages": [{"role": "user", "content": QUESTION}],
    }
    headers = {"x-api-key": "sk-ant-test-0123456789", "anthropic-version": "2023-06-01"}
    answer = sidecar.request("POST", "/v1/messages", body, headers)
    assert answer.status == 200, answer.body
    (server,) = [span for span in _exported(sidecar, receiver[0]) if span.kind == SERVER]
    assert server.attributes["gen_ai.provider.name"] == "anthropic"
    assert server.attributes["gen_ai.operation.name"] == "chat"
    assert server.trace_id != TRACE_ID  # no traceparent sent: a trace of its own


def test_without_the_variables_nothing_is_traced(
    make_sidecar: SidecarFactory,
    receiver: tuple[OtlpReceiver, str],
    stub: Stub,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in OTEL_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    sidecar = make_sidecar()
    _ask(sidecar)
    _ask(sidecar)
    assert not sidecar.runtime.tracer.on
    assert not [t.name for t in threading.enumerate() if t.name.startswith("OtelBatch")]
    assert receiver[0].posts == 0
    # The client's traceparent still reaches the upstream unchanged.
    (sent,) = [r for r in stub.fake.requests if r.path == "/v1/chat/completions"]
    assert sent.headers["traceparent"] == TRACEPARENT


def test_an_endpoint_without_the_extra_is_said_once_and_runs_untraced(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry", None)  # as if the extra were not installed
    tracer = open_tracer({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"})
    assert not tracer.on
    (record,) = [r for r in caplog.records if "OpenTelemetry SDK is not installed" in r.message]
    assert record.levelname == "WARNING"


def _stream(sidecar: Sidecar, question: str = QUESTION) -> str:
    chunks = sidecar.client().chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": question}], stream=True
    )
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def test_the_response_model_is_the_answers_on_misses_and_hits_streamed_or_not(
    traced: SidecarFactory, receiver: tuple[OtlpReceiver, str], stub: Stub
) -> None:
    stub.fake.model_suffix = "-2024-07-18"  # the dated snapshot that served the alias
    sidecar = traced()
    _ask(sidecar)  # a miss, then its hit
    _ask(sidecar)
    streamed = _stream(sidecar, "Another question, streamed.")  # a streamed miss
    assert streamed and _stream(sidecar, "Another question, streamed.") == streamed  # its hit
    spans = _exported(sidecar, receiver[0])
    servers = [span for span in spans if span.kind == SERVER]
    assert [s.attributes["sidecache.cache"] for s in servers] == ["MISS", "HIT"] * 2
    for span in servers:
        assert span.attributes["gen_ai.request.model"] == "gpt-4o-mini"
        assert span.attributes["gen_ai.response.model"] == "gpt-4o-mini-2024-07-18"
        assert not [name for name, _ in span.events if name.startswith("gen_ai.")]


def test_a_streamed_answers_content_is_captured_from_its_assembled_whole(
    traced: SidecarFactory, receiver: tuple[OtlpReceiver, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "true")
    sidecar = traced()
    said = _stream(sidecar)
    assert _stream(sidecar) == said  # the hit, replayed from the stored whole
    servers = [span for span in _exported(sidecar, receiver[0]) if span.kind == SERVER]
    assert len(servers) == 2
    for server in servers:
        events = dict(server.events)
        assert events["gen_ai.user.message"]["content"] == QUESTION
        assert said and events["gen_ai.choice"]["content"] == said


def test_a_follower_on_another_replica_waits_in_a_peer_wait_span(
    traced: SidecarFactory, receiver: tuple[OtlpReceiver, str], stub: Stub, redis_url: str
) -> None:
    leader, follower = traced(REDIS_URL=redis_url), traced(REDIS_URL=redis_url)
    question = "Which replica asks the upstream? " + str(id(leader))
    stub.fake.hang = True
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(_ask_about, leader, question)
        _wait_until(lambda: stub.fake.in_flight == 1, "the leader reached the upstream")
        second = pool.submit(_ask_about, follower, question)
        _wait_until(lambda: _peer_waiting(follower), "the follower waits for its peer")
        stub.fake.hang = False
        assert first.result(timeout=30) == second.result(timeout=30)
    assert stub.fake.calls.get("/v1/chat/completions") == 1
    _exported(leader, receiver[0])
    spans = _exported(follower, receiver[0])  # both replicas' (one receiver)
    (wait,) = _named(spans, "sidecache.peer_wait")
    (server,) = [s for s in spans if s.kind == SERVER and s.span_id == wait.parent_id]
    assert server.attributes["sidecache.cache"] == "COALESCED"  # served by the peer's call
    assert wait.attributes["sidecache.peer.entry"] is True
    assert not [s for s in spans if s.name == "sidecache.upstream" and s.trace_id == wait.trace_id]


def _ask_about(sidecar: Sidecar, question: str) -> str:
    answer = sidecar.client().chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": question}]
    )
    return answer.choices[0].message.content or ""


def _peer_waiting(sidecar: Sidecar) -> bool:
    peers = sidecar.runtime.runner._peers
    return peers is not None and bool(peers._landed)


def _wait_until(ready: Callable[[], bool], what: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not ready():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout_s} s: {what}")
        time.sleep(0.01)
