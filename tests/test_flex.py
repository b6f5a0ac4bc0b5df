"""The flex lane (docs/design.md §11, issue 14 item 5): with UPSTREAM_FLEX=on, low-priority chat
for a flex-capable model goes upstream at `service_tier: "flex"`; a 429 or a timeout there is
retried once at the standard tier, the client gets one answer and the ledger one row; the
stored answer serves standard requests too. Off, nothing changes."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.settings import SettingsError
from proxy.settings_load import load_settings
from proxy.upstream.flex import FlexLane, answer_tier
from tests.fixtures.sidecar import HttpAnswer, LoopThread, Sidecar, SidecarFactory, Stub
from tests.test_ledger_e2e import flush, ledger_of

FLEX_MODEL = "o4-mini"  # in the fake's catalog and in the default UPSTREAM_FLEX_MODELS
LOW = {"X-Priority": "low"}


def ask(
    sidecar: Sidecar,
    question: str,
    headers: dict[str, str] | None = None,
    model: str = FLEX_MODEL,
    **extra: Any,
) -> HttpAnswer:
    body = {"model": model, "messages": [{"role": "user", "content": question}], **extra}
    return sidecar.request("POST", "/v1/chat/completions", body, headers)


def tiers_sent(stub: Stub, calls: int) -> list[Any]:
    """The service_tier of each of the upstream's last `calls` requests (None: not sent)."""
    bodies = [r.body for r in stub.fake.requests[-calls:]]
    return [b.get("service_tier") if isinstance(b, dict) else "<no JSON body>" for b in bodies]


def rows_for(loop_thread: LoopThread, sidecar: Sidecar) -> list[dict[str, Any]]:
    flush(loop_thread, sidecar)
    sql = (
        "SELECT request_type, model, cache_status, status, cost, service_tier, prompt_tokens,"
        " completion_tokens, cached_tokens FROM ai_requests ORDER BY created_at"
    )
    return loop_thread.run(ledger_of(sidecar).fetch(sql))


def test_flex_models_are_globs_and_bad_settings_stop_start_up() -> None:
    assert load_settings({}).upstream.flex is False
    lane = FlexLane.from_settings(load_settings({"UPSTREAM_FLEX": "on"}).upstream)
    assert lane is not None
    assert [lane.serves(m) for m in ("o3", "o3-pro", "o4-mini-2025-04-16", "gpt-5-nano")] == [
        True,
        True,
        True,
        True,
    ]
    assert not lane.serves("gpt-4o-mini") and not lane.serves("o1")
    chosen = load_settings({"UPSTREAM_FLEX": "on", "UPSTREAM_FLEX_MODELS": "gpt-4o*, o1"})
    assert chosen.upstream.flex_models == ["gpt-4o*", "o1"]
    assert FlexLane.from_settings(load_settings({"UPSTREAM_FLEX": "off"}).upstream) is None
    bad = [
        ({"UPSTREAM_FLEX": "sometimes"}, "UPSTREAM_FLEX='sometimes'"),
        ({"UPSTREAM_FLEX_MODELS": "o3 mini"}, "UPSTREAM_FLEX_MODELS='o3 mini'"),
        ({"UPSTREAM_FLEX": "on", "UPSTREAM_FLEX_MODELS": ","}, "UPSTREAM_FLEX_MODELS=','"),
    ]
    for env, named in bad:
        with pytest.raises(SettingsError, match=named.replace("*", r"\*")):
            load_settings(env)


def test_answer_tier_reads_the_body() -> None:
    assert answer_tier(b'{"service_tier": "flex", "choices": []}') == "flex"
    assert answer_tier(b'{"choices": []}') is None
    assert answer_tier(b"not json") is None
    assert answer_tier(b'{"service_tier": 3}') is None


def test_only_low_priority_work_for_flex_models_goes_at_flex(
    make_sidecar: SidecarFactory, stub: Stub
) -> None:
    sidecar = make_sidecar(UPSTREAM_FLEX="on")
    answer = ask(sidecar, "Summarise the water cycle.", LOW)
    assert answer.status == 200 and answer.headers["x-cache"] == "MISS"
    assert tiers_sent(stub, 1) == ["flex"]
    assert answer.json()["service_tier"] == "flex"
    for headers in ({"X-Priority": "high"}, {"X-Priority": "normal"}, None):
        ask(sidecar, f"Name a river ({headers}).", headers)
        assert tiers_sent(stub, 1) == [None]
    ask(sidecar, "Name a mountain.", LOW, model="gpt-4o-mini")  # not a flex model
    assert tiers_sent(stub, 1) == [None]
    ask(sidecar, "Name a lake.", LOW, service_tier="priority")  # the client's own tier
    assert tiers_sent(stub, 1) == ["priority"]
    # A stream at flex too.
    streamed = ask(sidecar, "Name a desert.", LOW, stream=True)
    assert streamed.status == 200 and b"data: [DONE]" in streamed.body
    assert tiers_sent(stub, 1) == ["flex"]
    # The flex answer is stored under the client's key: a standard request is its hit.
    calls = stub.calls
    hit = ask(sidecar, "Summarise the water cycle.")
    assert (
        hit.headers["x-cache"] == "HIT"
        and hit.headers["x-cache-key"] == (answer.headers["x-cache-key"])
    )
    assert stub.calls == calls


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_a_429_at_flex_is_retried_once_at_standard(
    make_sidecar: SidecarFactory, stub: Stub, loop_thread: LoopThread, stream: bool
) -> None:
    sidecar = make_sidecar(UPSTREAM_FLEX="on")
    stub.fake.flex_fail_status = 429
    calls = stub.calls
    answer = ask(sidecar, "Explain tides.", LOW, max_tokens=5, stream=stream)
    assert answer.status == 200 and answer.headers["x-cache"] == "MISS", answer.body
    assert stub.calls == calls + 2
    assert tiers_sent(stub, 2) == ["flex", None]
    if not stream:
        assert answer.json()["service_tier"] == "default"  # the standard tier served it
    rows = rows_for(loop_thread, sidecar)
    assert len(rows) == 1
    row = rows[0]
    assert (row["request_type"], row["model"], row["status"]) == (
        "chat.completions",
        FLEX_MODEL,
        200,
    )
    assert row["cost"] > 0  # one call's price, counted once


def test_a_timeout_at_flex_is_retried_at_standard(
    make_sidecar: SidecarFactory, stub: Stub, loop_thread: LoopThread
) -> None:
    sidecar = make_sidecar(UPSTREAM_FLEX="on", UPSTREAM_TOTAL_TIMEOUT="1")
    stub.fake.flex_latency_ms = 3000  # flex calls only: the standard retry answers at once
    answer = ask(sidecar, "Explain eclipses.", LOW, max_tokens=5)
    assert answer.status == 200 and answer.json()["service_tier"] == "default", answer.body
    assert tiers_sent(stub, 2) == ["flex", None]
    assert len(rows_for(loop_thread, sidecar)) == 1


def test_a_flex_429_for_a_standard_request_is_not_retried(
    make_sidecar: SidecarFactory, stub: Stub
) -> None:
    """Only calls the sidecar sent at flex are retried; a client's own flex tier is its own."""
    sidecar = make_sidecar(UPSTREAM_FLEX="on")
    stub.fake.flex_fail_status = 429
    calls = stub.calls
    answer = ask(sidecar, "Explain seasons.", LOW, service_tier="flex")
    assert answer.status == 429 and answer.json()["error"]["code"] == "resource_unavailable"
    assert stub.calls == calls + 1


def test_off_changes_nothing(make_sidecar: SidecarFactory, stub: Stub) -> None:
    sidecar = make_sidecar()
    stub.fake.flex_fail_status = 429  # would refuse any flex call
    answer = ask(sidecar, "Explain rainbows.", LOW)
    assert answer.status == 200 and answer.json()["service_tier"] == "default"
    assert tiers_sent(stub, 1) == [None]


def test_the_ledger_records_and_prices_the_tier_that_served_each_call(
    make_sidecar: SidecarFactory, stub: Stub, loop_thread: LoopThread
) -> None:
    sidecar = make_sidecar(UPSTREAM_FLEX="on")
    prices = sidecar.runtime.prices
    assert ask(sidecar, "Explain eclipses.", LOW, max_tokens=5).status == 200  # served at flex
    stub.fake.flex_fail_status = 429
    assert ask(sidecar, "Explain comets.", LOW, max_tokens=5).status == 200  # retried: standard
    flex_row, standard_row = rows_for(loop_thread, sidecar)
    assert (flex_row["service_tier"], standard_row["service_tier"]) == ("flex", "default")
    for row, factor in ((flex_row, 0.5), (standard_row, 1.0)):  # config/pricing.toml [tiers]
        tokens = (row["prompt_tokens"], row["cached_tokens"], row["completion_tokens"])
        assert row["cost"] > 0
        assert row["cost"] == pytest.approx(prices.cost(FLEX_MODEL, *tokens) * factor)
