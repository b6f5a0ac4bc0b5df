"""The hit path's in-process tables (issue #22, proxy/handlers/hot.py): a request is known only
by its exact bytes, so whatever header or body byte could change its answer makes it another
request; a stored answer is decoded once per stored value, so an overwritten entry is served
as it now is; and the memory store lets other ready requests run before it answers."""

from __future__ import annotations

import asyncio

import pytest

from proxy.cache.entry import EntryMeta, StoredResponse, encode_entry
from proxy.cache.lru import ByteLru
from proxy.cache.memory import MemoryStore
from proxy.handlers.hot import KnownRequests, Prepared, PreparedEntries
from proxy.keys import CacheKey
from proxy.ledger.pricing import PriceTable
from proxy.settings import PricingSettings
from tests.fixtures.sidecar import OTHER_API_KEY, Sidecar, Stub

BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Name a prime."}]}
META = EntryMeta("t_1", "chat.completions", "gpt-4o-mini", "persona", None, {})


def test_byte_lru_evicts_the_least_recently_used_and_refuses_what_cannot_fit() -> None:
    lru: ByteLru[str, int] = ByteLru(100)
    assert lru.put("a", 1, 40) and lru.put("b", 2, 40)
    assert lru.get("a") == 1  # a is now the most recently used ...
    assert lru.put("c", 3, 40)  # ... so b goes
    assert (lru.get("a"), lru.get("b"), lru.get("c")) == (1, None, 3)
    assert (len(lru), lru.bytes) == (2, 80)
    assert not lru.put("huge", 4, 101)
    assert lru.get("huge") is None and lru.bytes == 80
    assert lru.put("a", 5, 10)  # replacing charges the new size only
    assert (lru.get("a"), lru.bytes) == (5, 50)
    assert lru.pop("a") == 5 and lru.bytes == 40


def test_known_requests_know_only_the_very_same_bytes() -> None:
    known: KnownRequests[str] = KnownRequests(1 << 20)
    headers = ((b"Authorization", b"Bearer a"), (b"X-Persona-Tone", b"formal"))
    known.put("chat.completions", b"{}", headers, "found", 2)
    assert known.get("chat.completions", b"{}", headers) == "found"
    assert known.get("completions", b"{}", headers) is None
    assert known.get("chat.completions", b"{ }", headers) is None
    assert known.get("chat.completions", b"{}", headers[:1]) is None
    other = ((b"Authorization", b"Bearer b"), (b"X-Persona-Tone", b"formal"))
    assert known.get("chat.completions", b"{}", other) is None


def test_known_requests_are_bounded_by_bytes() -> None:
    known: KnownRequests[int] = KnownRequests(64 << 10)
    body = b"x" * 1000
    for n in range(200):
        known.put("chat.completions", body + str(n).encode(), (), n, 1000)
    assert known.get("chat.completions", body + b"199", ()) == 199
    assert known.get("chat.completions", body + b"0", ()) is None  # evicted long ago


def _stored(text: str) -> bytes:
    return encode_entry(StoredResponse(f'{{"text":"{text}"}}'.encode(), 1.0, META))


def test_a_prepared_entry_is_decoded_again_when_its_bytes_change() -> None:
    prepared = PreparedEntries(1 << 20)
    key = CacheKey("ab" * 32)
    first = prepared.get(key, _stored("one"))
    assert first is not None and first.entry.body == b'{"text":"one"}'
    assert prepared.get(key, _stored("one")) is first  # equal bytes (a Redis read): reused
    second = prepared.get(key, _stored("two"))
    assert second is not None and second.entry.body == b'{"text":"two"}'
    assert second.headers["X-Cache-Key"] == key.short_id
    assert prepared.get(key, b"\xc1 not msgpack") is None  # a broken entry is a miss
    assert prepared.get(key, _stored("two")) is not second  # ... and was forgotten


def test_a_prepared_entry_is_priced_once_per_model_and_unpriced_hits_still_count() -> None:
    prices = PriceTable.from_settings(PricingSettings())
    entry = StoredResponse(b"{}", 1.0, META, prompt_tokens=1000, completion_tokens=500)
    found = Prepared(encode_entry(entry), entry, CacheKey("cd" * 32))
    priced = prices.cost("gpt-4o-mini", 1000, 0, 500)
    assert priced > 0
    assert found.cost(prices, "gpt-4o-mini") == found.cost(prices, "gpt-4o-mini") == priced
    assert found.cost(prices, "gpt-4o") == prices.cost("gpt-4o", 1000, 0, 500) != priced
    assert found.cost(prices, "my-local-llama") == found.cost(prices, "my-local-llama") == 0.0
    assert prices.unpriced_requests == 2  # every unpriced hit is counted, as on a miss


async def test_the_memory_store_lets_ready_requests_run_before_it_answers() -> None:
    store = MemoryStore(1 << 20)
    await store.put("k", b"v", 60)
    ran: list[str] = []
    other = asyncio.get_running_loop().call_soon(ran.append, "other request")
    assert await store.get("k") == b"v"
    assert ran == ["other request"]  # it ran while this hit waited its turn
    other.cancel()
    ran.clear()
    asyncio.get_running_loop().call_soon(ran.append, "again")
    assert await store.get_many(["k", "none"]) == [b"v", None]
    assert ran == ["again"]


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_known_bytes_with_another_credential_or_persona_are_another_request(
    any_sidecar: Sidecar, stub: Stub, stream: bool
) -> None:
    body = {**BODY, "stream": stream}
    tone = {"X-Persona-Tone": "formal"}
    assert any_sidecar.request("POST", "/v1/chat/completions", body, tone).headers["x-cache"] == (
        "MISS"
    )
    again = any_sidecar.request("POST", "/v1/chat/completions", body, tone)
    assert again.headers["x-cache"] == "HIT"
    assert stub.calls == 1
    other_tenant = {**tone, "Authorization": f"Bearer {OTHER_API_KEY}"}
    answer = any_sidecar.request("POST", "/v1/chat/completions", body, other_tenant)
    assert answer.headers["x-cache"] == "MISS"  # same body bytes, another tenant
    other_persona = {"X-Persona-Tone": "friendly"}
    answer = any_sidecar.request("POST", "/v1/chat/completions", body, other_persona)
    assert answer.headers["x-cache"] == "MISS"
    no_cache = {**tone, "Cache-Control": "no-cache"}
    answer = any_sidecar.request("POST", "/v1/chat/completions", body, no_cache)
    assert answer.headers["x-cache"] == "MISS"
    assert stub.calls == 4
    # The known request still hits, its answer as stored by the refresh above.
    final = any_sidecar.request("POST", "/v1/chat/completions", body, tone)
    assert final.headers["x-cache"] == "HIT" and stub.calls == 4
    assert _answer_id(final.body) == _answer_id(answer.body)


def _answer_id(body: bytes) -> bytes:
    """The answer's id, the same in a JSON answer and in every chunk of its stream."""
    return body.partition(b'"id":')[2].partition(b",")[0]


def test_an_overwritten_entry_is_served_as_it_now_is(any_sidecar: Sidecar, stub: Stub) -> None:
    first = any_sidecar.request("POST", "/v1/chat/completions", BODY)
    assert first.headers["x-cache"] == "MISS"
    hit = any_sidecar.request("POST", "/v1/chat/completions", BODY)
    assert (hit.headers["x-cache"], hit.body) == ("HIT", first.body)
    refreshed = any_sidecar.request(
        "POST", "/v1/chat/completions", BODY, {"Cache-Control": "no-cache"}
    )
    assert refreshed.body != first.body  # the fake upstream answers with a new id each time
    after = any_sidecar.request("POST", "/v1/chat/completions", BODY)
    assert (after.headers["x-cache"], after.body) == ("HIT", refreshed.body)
    assert stub.calls == 2
