"""The admin port's first part: liveness, readiness and Prometheus metrics (issue 2 item 10)."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.fixtures.sidecar import API_KEY, Sidecar, SidecarFactory, Stub

MESSAGES: list[Any] = [{"role": "user", "content": "What is a prime number?"}]
USER_ID = "learner-metrics-314"


@pytest.mark.parametrize("admin", [True, False], ids=["admin-port", "proxy-port"])
def test_healthz(any_sidecar: Sidecar, admin: bool) -> None:
    answer = any_sidecar.request("GET", "/healthz", admin=admin)
    assert answer.status == 200
    assert answer.json() == {"status": "ok"}


@pytest.mark.parametrize("admin", [True, False], ids=["admin-port", "proxy-port"])
def test_readyz_names_the_backend(
    make_sidecar: SidecarFactory, redis_url: str, admin: bool
) -> None:
    for env, backend in (({}, "memory"), ({"REDIS_URL": redis_url}, "redis")):
        answer = make_sidecar(**env).request("GET", "/readyz", admin=admin)
        assert answer.status == 200
        body = answer.json()
        assert body["status"] == "ready"
        assert body["cache"] == {"backend": backend, "reachable": True}
        assert body["mode"] == "pass-through"


def samples(sidecar: Sidecar) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample on /metrics, by (name, labels)."""
    answer = sidecar.request("GET", "/metrics", admin=True)
    assert answer.status == 200
    assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
    found: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in text_string_to_metric_families(answer.body.decode()):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def value(
    found: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    return found.get((name, frozenset(labels.items())), 0.0)


def test_metrics_after_traffic(sidecar: Sidecar, stub: Stub) -> None:
    client = sidecar.client(**{"X-User-Id": USER_ID, "X-Persona-Experience": "expert"})
    for _ in range(3):
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    client.embeddings.create(model="text-embedding-3-small", input=["a", "b", "c"])
    client.embeddings.create(model="text-embedding-3-small", input=["a", "b", "d", "e"])
    client.moderations.create(input="fine")
    client.models.list()
    assert sidecar.request("POST", "/v1/chat/completions", b"{").status == 400

    found = samples(sidecar)
    requests = "sidecache_requests_total"
    chat = {"endpoint": "chat.completions"}
    assert value(found, requests, **chat, cache="HIT", status="200") == 2
    assert value(found, requests, **chat, cache="MISS", status="200") == 1
    assert value(found, requests, **chat, cache="NONE", status="400") == 1
    assert value(found, requests, endpoint="embeddings", cache="MISS", status="200") == 2
    assert value(found, requests, endpoint="moderations", cache="MISS", status="200") == 1
    assert value(found, requests, endpoint="other", cache="NONE", status="200") == 1

    histogram = "sidecache_request_duration_seconds"
    assert value(found, f"{histogram}_count", **chat, cache="HIT") == 2
    assert value(found, f"{histogram}_bucket", **chat, cache="HIT", le="+Inf") == 2
    assert value(found, f"{histogram}_sum", **chat, cache="HIT") > 0

    upstream = "sidecache_upstream_requests_total"
    assert value(found, upstream, endpoint="chat.completions", status="200") == 1
    assert value(found, upstream, endpoint="embeddings", status="200") == 2
    assert value(found, upstream, endpoint="other", status="200") == 1
    assert stub.calls == 5
    upstream_seconds = "sidecache_upstream_duration_seconds_count"
    assert value(found, upstream_seconds, endpoint="embeddings") == 2

    items = "sidecache_embedding_items_total"
    assert value(found, items, cache="HIT") == 2  # "a" and "b" the second time
    assert value(found, items, cache="MISS") == 5
    # One chat answer, five vectors and one moderation verdict are stored.
    assert value(found, "sidecache_cache_entries") == 7
    assert value(found, "sidecache_cache_bytes") > 0
    assert value(found, "sidecache_cache_backend_up", backend="memory") == 1

    tenant = sidecar.runtime.keys.tenant_id(f"Bearer {API_KEY}")
    labels = {v for (_, pairs) in found for (_, v) in pairs}
    assert labels
    for label in labels:
        assert USER_ID not in label
        assert tenant not in label
        assert not label.startswith("t_")
        assert "expert" not in label
