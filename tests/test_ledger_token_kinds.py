"""Every token priced, recorded and shown (issue 14, docs/design.md §11): a miss whose usage
holds cached reads and reasoning tokens is priced by kind and its row records each kind; its
hits (JSON and streamed) record the same tokens as avoided and save exactly what it cost, on
PostgreSQL and on SQLite. Stored entries and peers' answers carry the kinds; entries stored
before them still decode."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import pytest

from proxy.accounting import Outcome
from proxy.cache.entry import EntryMeta, StoredResponse, decode_response, encode_entry
from proxy.dispatch.call import entry_usage, stored_response
from proxy.fake_upstream.content import chat_prompt_tokens
from proxy.handlers.hot import Prepared
from proxy.keys import CacheKey
from proxy.ledger.pricing import PriceTable
from proxy.settings import PricingSettings
from proxy.vocabulary import Endpoint
from proxy.wire import CompletionTokensDetails, PromptTokensDetails, Usage
from tests.fixtures.sidecar import LoopThread, SidecarFactory, Stub
from tests.ledger_db import assert_rollup_matches
from tests.test_admin_health import samples, value
from tests.test_ledger_e2e import chat, chat_messages, chat_stream, ledger_of

MODEL = "gpt-4o-mini"
MAX_TOKENS = 7  # the stub writes this many visible tokens, then the reasoning knob's
CACHED, REASONING = 4, 5
# Every rate different, so each kind's share of the cost shows.
PRICES = f"""
[tiers]
flex = 0.5

[models."{MODEL}"]
input = 1.0
cached_input = 0.25
cache_write = 2.0
output = 4.0
reasoning = 8.0
taken = "2026-12-06"
"""
META = EntryMeta("t_1", "chat.completions", MODEL, "persona", None, {})
USAGE = Usage(
    prompt_tokens=1000,
    completion_tokens=500,
    prompt_tokens_details=PromptTokensDetails(300),
    completion_tokens_details=CompletionTokensDetails(200),
    cache_write_tokens=100,
)


@pytest.fixture
def price_file(tmp_path: Path) -> Path:
    path = tmp_path / "prices.toml"
    path.write_text(PRICES)
    return path


@pytest.fixture
def prices(price_file: Path) -> PriceTable:
    return PriceTable.from_settings(PricingSettings(file=str(price_file)))


@pytest.fixture(params=["postgres", "sqlite"])
def ledger_env(request: pytest.FixtureRequest) -> dict[str, str]:
    if request.param == "postgres":
        return {"DATABASE_URL": request.getfixturevalue("postgres_dsn")}
    return {}


def test_an_entry_keeps_every_kind_and_old_entries_still_decode() -> None:
    entry = stored_response(b"{}", META, USAGE, "flex")
    back = decode_response(encode_entry(entry))
    assert back is not None
    kinds = (back.prompt_tokens, back.completion_tokens, back.cached_tokens)
    assert (*kinds, back.cache_write_tokens, back.reasoning_tokens) == (1000, 500, 300, 100, 200)
    assert back.service_tier == "flex"
    # A peer's answer (another replica stored it) is the usage its call reported.
    assert msgspec.structs.asdict(entry_usage(back)) == msgspec.structs.asdict(USAGE)
    # An entry of a sidecar before issue 14: six fields (the array's length says so).
    old = msgspec.msgpack.encode([b"{}", 1.0, msgspec.structs.astuple(META), 10, 5, 2])
    decoded = decode_response(old)
    assert decoded is not None
    assert (decoded.prompt_tokens, decoded.cache_write_tokens, decoded.reasoning_tokens) == (
        10, 0, 0,
    )  # fmt: skip
    assert decoded.service_tier is None


def test_paid_saved_and_a_hit_price_every_kind_at_the_tier(prices: PriceTable) -> None:
    kinds = (1000, 500, 300, 100, 200)  # prompt, completion, cached, cache_write, reasoning
    standard = (600 * 1.0 + 300 * 0.25 + 100 * 2.0 + 300 * 4.0 + 200 * 8.0) / 1e6
    miss = Outcome("t", Endpoint.CHAT, MODEL)
    assert miss.paid(prices, *kinds) == pytest.approx(standard)
    flex = Outcome("t", Endpoint.CHAT, MODEL, service_tier="flex")
    assert flex.paid(prices, *kinds) == pytest.approx(standard / 2)
    assert (flex.cached_tokens, flex.cache_write_tokens, flex.reasoning_tokens) == (300, 100, 200)
    follower = Outcome("t", Endpoint.CHAT, MODEL)
    follower.saved(prices, *kinds, tier="flex")
    assert (follower.cost, follower.saved_cost) == (0.0, pytest.approx(standard / 2))
    # A hit on the entry the flex call stored saves what that call cost.
    entry = stored_response(b"{}", META, USAGE, "flex")
    found = Prepared(encode_entry(entry), entry, CacheKey("ab" * 32))
    assert found.cost(prices, MODEL) == pytest.approx(standard / 2)
    plain = StoredResponse(b"{}", 1.0, META, 1000, 500, 300, 100, 200)
    assert Prepared(encode_entry(plain), plain, CacheKey("cd" * 32)).cost(
        prices, MODEL
    ) == pytest.approx(standard)


async def test_a_miss_with_cached_and_reasoning_tokens_and_its_hits_on_the_ledger(
    make_sidecar: SidecarFactory,
    stub: Stub,
    loop_thread: LoopThread,
    ledger_env: dict[str, str],
    price_file: Path,
) -> None:
    stub.fake.cached_tokens, stub.fake.reasoning_tokens = CACHED, REASONING
    sidecar = make_sidecar(PRICING_FILE=str(price_file), **ledger_env)
    client = sidecar.aclient()
    question, streamed = "Explain photosynthesis briefly.", "Name three rivers in Africa."

    def paid(text: str) -> float:
        prompt = chat_prompt_tokens(chat_messages(text))
        visible = MAX_TOKENS
        return ((prompt - CACHED) * 1.0 + CACHED * 0.25 + visible * 4.0 + REASONING * 8.0) / 1e6

    status, answer = await chat(client, question, {"X-User-Id": "u1"})
    assert status == "MISS"
    assert answer.usage.completion_tokens == MAX_TOKENS + REASONING
    assert answer.usage.prompt_tokens_details.cached_tokens == CACHED
    assert answer.usage.completion_tokens_details.reasoning_tokens == REASONING
    assert (await chat(client, question, {"X-User-Id": "u2"}))[0] == "HIT"
    assert (await chat_stream(client, question, {"X-User-Id": "u3"}, True))[0] == "HIT"
    status, usage = await chat_stream(client, streamed, {"X-User-Id": "u4"}, True)
    assert status == "MISS" and usage.completion_tokens_details.reasoning_tokens == REASONING
    assert (await chat(client, streamed, {"X-User-Id": "u5"}))[0] == "HIT"

    loop_thread.run(sidecar.runtime.ledger.flush())
    db = ledger_of(sidecar)
    rows = {row["user_id"]: row for row in (await db.rows_by_id()).values()}
    assert set(rows) == {"u1", "u2", "u3", "u4", "u5"}

    def kinds(row: dict[str, Any]) -> tuple[int, ...]:
        names = ("prompt_tokens", "completion_tokens", "cached_tokens", "cache_write_tokens")
        return (*(int(row[n]) for n in names), int(row["reasoning_tokens"]))

    for miss, hits, text in (("u1", ("u2", "u3"), question), ("u4", ("u5",), streamed)):
        prompt = chat_prompt_tokens(chat_messages(text))
        want = (prompt, MAX_TOKENS + REASONING, CACHED, 0, REASONING)
        assert kinds(rows[miss]) == want, miss
        assert rows[miss]["cost"] == pytest.approx(paid(text), rel=1e-9)
        assert (
            rows[miss]["saved_cost"] == 0 and rows[miss]["service_tier"] == "default"
        )  # as the answer says
        for hit in hits:  # tokens avoided, dollars avoided, dollars billed 0
            assert kinds(rows[hit]) == want, hit
            assert rows[hit]["cost"] == 0, hit
            assert rows[hit]["saved_cost"] == pytest.approx(rows[miss]["cost"], rel=1e-12), hit
    assert_rollup_matches(await db.rollup(), await db.grouped())
    assert_rollup_matches(await db.rollup("tenant"), await db.grouped("tenant"))

    # The tokens metric: the two misses' reasoning paid, the three hits' avoided.
    found = samples(sidecar)

    def tokens(kind: str, billing: str) -> float:
        labels = {"endpoint": "chat.completions", "kind": kind, "billing": billing}
        return value(found, "sidecache_tokens_total", **labels)

    assert (tokens("reasoning", "paid"), tokens("reasoning", "avoided")) == (10, 15)
    assert (tokens("cached_input", "paid"), tokens("cache_write", "paid")) == (8, 0)
    assert tokens("output", "avoided") == 3 * (MAX_TOKENS + REASONING)
