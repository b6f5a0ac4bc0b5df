"""Fallbacks (docs/design.md §13, issue 16 item 2): a model's chain is tried in order when its
upstream's breaker is open, or its call failed with 5xx, a timeout or a connection error before
any byte reached the client; never on a 4xx, and a 429 only moves on. Two real fake upstreams
on loopback; the answer says X-Upstream and X-Fallback-From."""

from __future__ import annotations

import json
from typing import Any

from tests.admin_support import BASE, TOKENS, call, get
from tests.fixtures.server_base import free_port
from tests.fixtures.sidecar import LoopThread, Sidecar, Stub
from tests.fixtures.upstreams import Routed, chat, sample
from tests.test_ledger_e2e import flush, ledger_of

FELL_BACK = {"from": "primary", "to": "backup"}


def served_by_backup(answer_headers: dict[str, str]) -> bool:
    return (
        answer_headers.get("x-upstream") == "backup"
        and answer_headers.get("x-fallback-from") == "primary"
    )


def failing_primary(routed: Routed, stub: Stub, status: int, **options: Any) -> Sidecar:
    """A routed sidecar without retries (`options` as `routed` takes them) whose primary fails
    its next call with `status`."""
    sidecar = routed(UPSTREAM_RETRIES="0", **options)
    stub.fake.fail_next, stub.fake.fail_status = 1, status
    return sidecar


def test_a_503_falls_back(routed: Routed, stub: Stub, backup: Stub) -> None:
    sidecar = failing_primary(routed, stub, 503)
    answer = chat(sidecar, "primary fails")
    assert answer.status == 200 and served_by_backup(answer.headers)
    assert (stub.calls, backup.calls) == (1, 1)
    assert sample(sidecar, "sidecache_upstream_fallbacks_total", **FELL_BACK) == 1


def test_an_open_breaker_falls_back_without_calling_the_upstream(
    routed: Routed, stub: Stub, backup: Stub
) -> None:
    sidecar = failing_primary(routed, stub, 500, BREAKER_FAIL_MAX="1")
    assert served_by_backup(chat(sidecar, "opens the breaker").headers)
    assert sidecar.runtime.breakers.breakers["primary/chat"].state == "open"
    answer = chat(sidecar, "breaker open")
    assert answer.status == 200 and served_by_backup(answer.headers)
    assert (stub.calls, backup.calls) == (1, 2)  # the open breaker kept the call here
    assert sample(sidecar, "sidecache_upstream_fallbacks_total", **FELL_BACK) == 2


def test_a_timeout_falls_back(routed: Routed, stub: Stub, backup: Stub) -> None:
    sidecar = routed(UPSTREAM_READ_TIMEOUT="0.3")
    stub.fake.hang = True
    answer = chat(sidecar, "primary hangs")
    stub.fake.hang = False
    assert answer.status == 200 and served_by_backup(answer.headers)
    assert (stub.calls, backup.calls) == (1, 1)  # a timeout is not retried, only moved on


def test_a_refused_connection_falls_back_after_its_retries(routed: Routed, backup: Stub) -> None:
    sidecar = routed(primary_url=f"http://127.0.0.1:{free_port()}/v1")
    answer = chat(sidecar, "primary is down")
    assert answer.status == 200 and served_by_backup(answer.headers)
    assert sample(sidecar, "sidecache_upstream_retries_total", upstream="primary") == 2
    assert backup.calls == 1


def test_never_on_a_4xx(routed: Routed, stub: Stub, backup: Stub) -> None:
    sidecar = routed()
    stub.fake.fail_next, stub.fake.fail_status = 1, 400
    answer = chat(sidecar, "a bad request")
    assert answer.status == 400 and answer.headers["x-upstream"] == "primary"
    assert "x-fallback-from" not in answer.headers
    assert (stub.calls, backup.calls) == (1, 0)


def test_a_429_moves_to_the_fallback_and_is_not_retried(
    routed: Routed, stub: Stub, backup: Stub
) -> None:
    sidecar = routed(UPSTREAM_RETRIES="2")
    stub.fake.fail_next, stub.fake.fail_status = 1, 429
    answer = chat(sidecar, "rate limited")
    assert answer.status == 200 and served_by_backup(answer.headers)
    assert (stub.calls, backup.calls) == (1, 1)
    assert sample(sidecar, "sidecache_upstream_retries_total", upstream="primary") == 0


def test_a_429_without_a_fallback_reaches_the_client(routed: Routed, stub: Stub) -> None:
    sidecar = routed(fallbacks={})
    stub.fake.fail_next, stub.fake.fail_status = 1, 429
    assert chat(sidecar, "nowhere to go").status == 429
    assert stub.calls == 1


def test_no_fallback_once_a_stream_started(routed: Routed, stub: Stub, backup: Stub) -> None:
    sidecar = routed()
    stub.fake.cut_stream_after = 2
    answer = chat(sidecar, "a stream that breaks " * 8, stream=True)
    assert answer.status == 200 and answer.headers["x-upstream"] == "primary"
    text = answer.body.decode()
    assert "upstream_stream_failed" in text and text.count("data: ") >= 2
    assert (stub.calls, backup.calls) == (1, 0)


def test_a_fallback_may_name_another_model(
    routed: Routed, stub: Stub, backup: Stub, loop_thread: LoopThread
) -> None:
    sidecar = failing_primary(routed, stub, 502, fallbacks={"gpt-4o-mini": ["backup:o4-mini"]})
    answer = chat(sidecar, "cheaper elsewhere")
    assert answer.status == 200 and served_by_backup(answer.headers)
    assert backup.fake.requests[-1].body["model"] == "o4-mini"
    flush(loop_thread, sidecar)
    rows = loop_thread.run(
        ledger_of(sidecar).fetch("SELECT model, upstream, served_model FROM ai_requests")
    )
    assert [tuple(r.values()) for r in rows] == [("gpt-4o-mini", "backup", "o4-mini")]


def test_fallback_answers_are_cached_under_the_requested_model(
    routed: Routed, stub: Stub, backup: Stub
) -> None:
    sidecar = failing_primary(routed, stub, 503)
    first = chat(sidecar, "stored from the backup")
    again = chat(sidecar, "stored from the backup")
    assert served_by_backup(first.headers) and again.headers["x-cache"] == "HIT"
    assert json.loads(again.body) == json.loads(first.body)


def test_cache_fallbacks_off_stores_no_fallback_answer(
    routed: Routed, stub: Stub, backup: Stub
) -> None:
    sidecar = failing_primary(routed, stub, 503, UPSTREAM_CACHE_FALLBACKS="off")
    assert served_by_backup(chat(sidecar, "not stored").headers)
    again = chat(sidecar, "not stored")
    assert again.headers["x-cache"] == "MISS" and again.headers["x-upstream"] == "primary"
    assert chat(sidecar, "not stored").headers["x-cache"] == "HIT"  # the primary's is stored
    assert (stub.calls, backup.calls) == (2, 1)


def test_admin_shows_upstream_health_shares_and_fallbacks(
    routed: Routed, stub: Stub, backup: Stub
) -> None:
    sidecar = failing_primary(routed, stub, 503, BREAKER_FAIL_MAX="1", ADMIN_TOKENS=TOKENS)
    chat(sidecar, "one falls back")
    chat(sidecar, "two falls back too")  # the breaker is open now
    listing = get(sidecar, "upstreams")
    by_name = {u["name"]: u for u in listing["upstreams"]}
    assert by_name["primary"]["state"] == "open" and by_name["backup"]["state"] == "closed"
    assert (by_name["primary"]["served"], by_name["backup"]["served"]) == (0, 2)
    assert by_name["backup"]["share"] == 1.0 and by_name["backup"]["host"].startswith("127.0.0.1")
    assert listing["fallbacks"] == [{"from": "primary", "to": "backup", "count": 2}]
    circuits = get(sidecar, "circuits")
    names = {c["name"]: c["upstream"] for c in circuits["circuits"]}
    assert names["primary/chat"] == "primary" and names["backup/embeddings"] == "backup"
    reset = call(sidecar, f"{BASE}/circuits/reset", method="POST", body={"breaker": "primary/chat"})
    assert reset.status == 200 and reset.json()["states"]["primary/chat"] == "closed"
