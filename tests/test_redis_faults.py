"""A sidecar whose Redis goes away and comes back (docs/design.md §7): it keeps answering as a
pass-through, says so in /readyz and /metrics, and caches again once Redis returns. Also:
replicas sharing a Redis share entries without any configured secret."""

from __future__ import annotations

import re
from typing import Any

import openai

from tests.fixtures.redis_server import RedisServer
from tests.fixtures.sidecar import OTHER_API_KEY, Sidecar, SidecarFactory, Stub

MESSAGES: list[Any] = [{"role": "user", "content": "Name three noble gases."}]


def ask(client: openai.OpenAI, question: str = "Name three noble gases.") -> str:
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": question}]
    )
    assert raw.status_code == 200
    assert raw.parse().choices[0].message.content
    return raw.headers["x-cache"]


def readiness(sidecar: Sidecar) -> dict[str, Any]:
    answer = sidecar.request("GET", "/readyz", admin=True)
    assert answer.status == 200  # degraded still serves: never taken out of rotation
    found: dict[str, Any] = answer.json()
    return found


def metric(text: str, name: str, **labels: str) -> float:
    """The summed value of every sample of `name` that carries all of `labels`."""
    pattern = re.compile(rf"^{re.escape(name)}(\{{[^}}]*\}})? (\S+)$", re.MULTILINE)
    wanted = [f'{label}="{value}"' for label, value in labels.items()]
    return sum(
        float(m.group(2))
        for m in pattern.finditer(text)
        if all(w in (m.group(1) or "") for w in wanted)
    )


def test_redis_down_means_pass_through_then_recovery(
    make_sidecar: SidecarFactory, stub: Stub, private_redis: RedisServer
) -> None:
    sidecar = make_sidecar(REDIS_URL=private_redis.url)
    client = sidecar.client()
    assert readiness(sidecar)["status"] == "ready"
    assert ask(client) == "MISS"
    assert ask(client) == "HIT"
    assert stub.calls == 1

    private_redis.stop()
    assert ask(client) == "MISS"  # answered by the upstream, not a 5xx
    assert ask(client) == "MISS"
    assert stub.calls == 3
    streamed = list(
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
    )
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
    ready = readiness(sidecar)
    assert ready["status"] == "degraded"
    assert ready["cache"] == {"backend": "redis", "reachable": False}
    metrics = sidecar.request("GET", "/metrics", admin=True).body.decode()
    assert 'sidecache_cache_backend_up{backend="redis"} 0.0' in metrics
    assert metric(metrics, "sidecache_cache_errors_total") > 0
    assert metric(metrics, "sidecache_cache_errors_total", op="get") >= 3
    assert metric(metrics, "sidecache_requests_total", cache="MISS", status="200") >= 4

    private_redis.start()  # same port, empty
    assert readiness(sidecar) == {
        "status": "ready",
        "cache": {"backend": "redis", "reachable": True},
        "ledger": {"sink": "sqlite", "reachable": True, "journal_pending": 0},
        "mode": "pass-through",
    }
    metrics = sidecar.request("GET", "/metrics", admin=True).body.decode()
    assert 'sidecache_cache_backend_up{backend="redis"} 1.0' in metrics
    assert ask(client) == "MISS"
    assert ask(client) == "HIT"


def test_sidecar_started_while_redis_is_down_still_serves(
    make_sidecar: SidecarFactory, stub: Stub, private_redis: RedisServer
) -> None:
    private_redis.stop()
    sidecar = make_sidecar(REDIS_URL=private_redis.url)
    client = sidecar.client()
    assert ask(client) == "MISS"
    assert readiness(sidecar)["status"] == "degraded"
    private_redis.start()
    assert ask(client, "another question") == "MISS"
    assert ask(client, "another question") == "HIT"


def test_replicas_sharing_redis_share_entries(
    make_sidecar: SidecarFactory, stub: Stub, redis_url: str
) -> None:
    first = make_sidecar(REDIS_URL=redis_url)
    second = make_sidecar(REDIS_URL=redis_url)
    # No CACHE_KEY_SECRET: the replicas agree on the tenant-hash secret through Redis.
    assert ask(first.client()) == "MISS"
    assert ask(second.client()) == "HIT"
    assert stub.calls == 1
    # ... which still keeps API keys apart.
    assert ask(second.client(api_key=OTHER_API_KEY)) == "MISS"
    assert ask(first.client(api_key=OTHER_API_KEY)) == "HIT"
    assert stub.calls == 2
