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
        Decision(True, 0, REQUESTS, TOKENS, base=Decision(True, 0, REQUESTS, TOKENS), left=7),
        Decision(True, 0, ScopeUse(3, 9, 10), None),  # over-counted: never a negative remaining
    ],
    ids=["both", "requests", "tokens", "leased", "over"],
)
def test_the_lines_are_the_headers_of_the_decision(decision: Decision) -> None:
    assert _lines(decision) == rate_headers(decision)


def test_a_leased_request_counts_its_own_unused_slots() -> None:
    base = Decision(True, 0, REQUESTS, TOKENS)
    first, later = (Decision(True, 0, REQUESTS, TOKENS, base, left) for left in (9, 3))
    assert _lines(first)["x-ratelimit-remaining-requests"] == "389"  # 500 - 120 + 9
    assert _lines(later)["x-ratelimit-remaining-requests"] == "383"
    assert base.lines is not None  # made once, for every request of the lease


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
    assert len(set(remaining)) == len(remaining)  # every hit counted once, as itself
    assert all(100000 - 401 - 2 * 1024 <= r < 100000 for r in remaining)

    streamed = client.chat.completions.with_raw_response.create(**body, stream=True)
    assert streamed.headers["x-cache"] == "HIT"  # a stream's are the response signal's
    assert [len(streamed.headers.get_list(name)) for name in NAMES] == [1] * len(NAMES)
    assert [chunk for chunk in streamed.parse()]
