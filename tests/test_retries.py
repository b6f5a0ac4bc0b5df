"""Retries (docs/design.md §13, issue 16 item 3): connection errors and 502/503/504 before the
first byte are retried on the same upstream with back-off, honouring Retry-After, at most
UPSTREAM_RETRIES times and within the request's deadline (UPSTREAM_TOTAL_TIMEOUT); every try
counts in the breaker and in sidecache_upstream_retries_total."""

from __future__ import annotations

import random
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from proxy.upstream.retries import BACKOFF_CAP_S, backoff_s, retry_after_s
from tests.fixtures.server_base import free_port
from tests.fixtures.sidecar import Stub
from tests.fixtures.upstreams import Routed, chat, sample

NO_FALLBACKS: dict[str, list[str]] = {}


def retries(sidecar: object) -> float:
    return sample(sidecar, "sidecache_upstream_retries_total", upstream="primary")  # type: ignore[arg-type]


def test_backoff_is_jittered_under_a_growing_ceiling_and_honours_retry_after() -> None:
    rng = random.Random(7)
    waits = [backoff_s(attempt, None, rng) for attempt in range(12) for _ in range(20)]
    assert all(0 <= w <= BACKOFF_CAP_S for w in waits) and len(set(waits)) > 200
    assert all(backoff_s(0, 2.5, rng) >= 2.5 for _ in range(20))
    assert retry_after_s({"Retry-After": "3"}) == 3.0
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    assert 25 < (retry_after_s({"Retry-After": later}) or 0) <= 30
    assert retry_after_s({"Retry-After": "soon"}) is None and retry_after_s({}) is None


@pytest.mark.parametrize("status", [502, 503, 504])
def test_a_transient_5xx_is_retried_on_the_same_upstream(
    routed: Routed, stub: Stub, backup: Stub, status: int
) -> None:
    sidecar = routed(fallbacks=NO_FALLBACKS)
    stub.fake.fail_next, stub.fake.fail_status = 2, status
    answer = chat(sidecar, f"transient {status}")
    assert answer.status == 200 and answer.headers["x-upstream"] == "primary"
    assert "x-fallback-from" not in answer.headers
    assert (stub.calls, backup.calls, retries(sidecar)) == (3, 0, 2)


def test_retries_are_bounded_by_upstream_retries(routed: Routed, stub: Stub) -> None:
    sidecar = routed(fallbacks=NO_FALLBACKS, UPSTREAM_RETRIES="1")
    stub.fake.fail_next, stub.fake.fail_status = 5, 503
    assert chat(sidecar, "still failing").status == 503  # the upstream's answer, relayed
    assert (stub.calls, retries(sidecar)) == (2, 1)


def test_a_500_is_not_retried(routed: Routed, stub: Stub) -> None:
    sidecar = routed(fallbacks=NO_FALLBACKS)
    stub.fake.fail_next, stub.fake.fail_status = 1, 500
    assert chat(sidecar, "a bug upstream").status == 500
    assert (stub.calls, retries(sidecar)) == (1, 0)


def test_retry_after_is_honoured(routed: Routed, stub: Stub) -> None:
    sidecar = routed(fallbacks=NO_FALLBACKS)
    stub.fake.fail_next, stub.fake.fail_status, stub.fake.fail_retry_after = 1, 503, "1"
    started = time.monotonic()
    answer = chat(sidecar, "wait a second")
    assert answer.status == 200 and stub.calls == 2
    assert time.monotonic() - started >= 1.0  # the retry waited what the upstream asked


def test_no_retry_past_the_deadline(routed: Routed, stub: Stub) -> None:
    sidecar = routed(fallbacks=NO_FALLBACKS, UPSTREAM_TOTAL_TIMEOUT="2")
    stub.fake.fail_next, stub.fake.fail_status, stub.fake.fail_retry_after = 1, 503, "30"
    answer = chat(sidecar, "too long a wait")
    assert answer.status == 503 and answer.headers.get("retry-after") == "30"
    assert (stub.calls, retries(sidecar)) == (1, 0)


def test_connection_errors_are_retried_then_answered_502(routed: Routed) -> None:
    sidecar = routed(primary_url=f"http://127.0.0.1:{free_port()}/v1", fallbacks=NO_FALLBACKS)
    answer = chat(sidecar, "nobody listens")
    assert answer.status == 502 and answer.json()["error"]["code"] == "upstream_unreachable"
    assert retries(sidecar) == 2


def test_retries_count_in_the_breaker(routed: Routed, stub: Stub) -> None:
    sidecar = routed(fallbacks=NO_FALLBACKS, BREAKER_FAIL_MAX="3")
    stub.fake.fail_next, stub.fake.fail_status = 3, 503
    assert chat(sidecar, "three failures in one request").status == 503
    assert sidecar.runtime.breakers.breakers["primary/chat"].state == "open"
    refused = chat(sidecar, "breaker open now")
    assert refused.status == 503 and refused.json()["error"]["code"] == "circuit_open"
    assert stub.calls == 3


def test_no_retry_that_its_own_breaker_would_refuse(routed: Routed, stub: Stub) -> None:
    sidecar = routed(fallbacks=NO_FALLBACKS, BREAKER_FAIL_MAX="2")
    stub.fake.fail_next, stub.fake.fail_status = 5, 503
    answer = chat(sidecar, "the second failure opens the breaker")
    assert answer.status == 503 and answer.json()["error"]["code"] != "circuit_open"
    assert (stub.calls, retries(sidecar)) == (2, 1)  # the upstream's own 503, relayed
    assert sidecar.runtime.breakers.breakers["primary/chat"].state == "open"
