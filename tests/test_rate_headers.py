"""The `x-ratelimit-*` headers of a hit decided from a lease (docs/design.md §13), which its
answer writes itself as bytes made once per decision (proxy/limits/headers.py: RatedResponse):
the same headers as every other answer's, each once, the body after them intact."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from proxy.limits import Decision, ScopeUse, rated_response
from proxy.limits.headers import rate_headers
from tests.fixtures.sidecar import SidecarFactory

KINDS = ("requests", "tokens")
NAMES = [f"x-ratelimit-{what}-{kind}" for what in ("limit", "remaining", "reset") for kind in KINDS]
REQUESTS = ScopeUse(limit=500, used=120, reset_ms=61_500)
TOKENS = ScopeUse(limit=90_000, used=4_321, reset_ms=750)


def _lines(decision: Decision) -> dict[str, str]:
    block = rated_response(b"{}", {}, decision).rate_lines
    assert block.endswith(b"\r\n\r\n")  # the header block's end: the body follows
    pairs = [line.split(": ", 1) for line in block.decode().split("\r\n")[:-2]]
    assert all(len(pair) == 2 for pair in pairs)
    found = dict(pairs)
    assert len(found) == len(pairs)  # each header once
    return found


@pytest.mark.parametrize(
    "decision",
    [
        Decision(True, 0, REQUESTS, TOKENS),
        Decision(True, 0, REQUESTS, None),
        Decision(True, 0, None, TOKENS),
        Decision(True, 0, ScopeUse(3, 9, 10), None),  # over-counted: never a negative remaining
    ],
    ids=["both", "requests", "tokens", "over"],
)
def test_the_lines_are_the_headers_of_the_decision(decision: Decision) -> None:
    assert _lines(decision) == rate_headers(decision)


def test_every_request_of_a_lease_shares_its_decision_s_lines() -> None:
    lease = Decision(True, 0, REQUESTS, TOKENS)
    first, later = (rated_response(b"{}", {}, lease).rate_lines for _ in range(2))
    assert later is first  # made once, for every request of the lease
    assert _lines(lease)["x-ratelimit-remaining-requests"] == "380"  # 500 - 120, all counted


def test_busy_hits_are_leased_and_each_carries_its_headers_once(
    make_sidecar: SidecarFactory, redis_url: str
) -> None:
    side = make_sidecar(REDIS_URL=redis_url, RATE_TENANT_RPM="100000", RATE_TENANT_TPM="9000000")
    body: dict[str, Any] = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": f"leased {time.monotonic()}"}],
    }
    client = side.client()
    assert client.chat.completions.create(**body).choices  # the miss that stores the answer

    def hit(_: int) -> Any:
        return client.chat.completions.with_raw_response.create(**body)

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(hit, range(400)))
    limiter = side.runtime.limiter
    lease = limiter.limits(next(iter(limiter.seen)), None).lease  # type: ignore[union-attr]
    assert lease is not None and lease.batch >= 8  # most hits were decided from leases
    remaining = []
    for answer in answers:
        headers = answer.headers
        assert headers["x-cache"] == "HIT"
        assert [len(headers.get_list(name)) for name in NAMES] == [1] * len(NAMES)
        assert headers["x-ratelimit-limit-requests"] == "100000"
        assert headers["x-ratelimit-limit-tokens"] == "9000000"
        assert headers["x-request-id"]  # the response signal's own header is still there
        assert answer.parse().choices[0].message.content  # the body after the lines is whole
        remaining.append(int(headers["x-ratelimit-remaining-requests"]))
    # Each lease's hits share its figure, which counts the whole batch: in the order the log
    # counted them, the n-th hit (after the miss) is never told more than 100000 - 1 - n.
    assert len(set(remaining)) < len(remaining) / 4
    in_order = sorted(remaining, reverse=True)
    assert all(r <= 100000 - 2 - n for n, r in enumerate(in_order))
    assert in_order[-1] >= 100000 - 401 - 2 * 1024  # and never below what the leases took

    streamed = client.chat.completions.with_raw_response.create(**body, stream=True)
    assert streamed.headers["x-cache"] == "HIT"  # a stream's are the response signal's
    assert [len(streamed.headers.get_list(name)) for name in NAMES] == [1] * len(NAMES)
    assert [chunk for chunk in streamed.parse()]
