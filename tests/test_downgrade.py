"""Over-budget downgrade (docs/design.md §13): a request whose estimate would cross its budget
is sent with the cheaper model `[budget.downgrade_to]` names, marked X-Downgraded-From, recorded
in the ledger as the model that served it and cached under that model's key; the usual 429
when the cheaper model does not fit either."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from proxy.settings import BudgetSettings
from tests.admin_support import TOKENS, get
from tests.fixtures.sidecar import LoopThread, Sidecar, SidecarFactory, Stub
from tests.ledger_db import LedgerDb

CHAT = "/v1/chat/completions"


def chat(model: str, text: str) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": 200}


def downgrading(make_sidecar: SidecarFactory, tmp_path: Path, daily_usd: float) -> Sidecar:
    config = tmp_path / "downgrade.toml"
    config.write_text(
        f"[budget]\ntenant_daily_usd = {daily_usd}\n\n"
        '[budget.downgrade_to]\n"gpt-4o*" = "gpt-4o-mini"\n"o3*" = "o4-mini"\n'
    )
    return make_sidecar(SIDECACHE_CONFIG=str(config), ADMIN_TOKENS=TOKENS)


def test_the_first_matching_glob_names_the_cheaper_model() -> None:
    settings = BudgetSettings(downgrade_to={"gpt-4o-mini*": "gpt-4o-mini", "gpt-4o*": "x"})
    assert settings.downgrade_for("gpt-4o-2024-08-06") == "x"
    assert settings.downgrade_for("gpt-4o-mini") is None  # already the cheaper one
    assert settings.downgrade_for("o3") is None


def test_over_budget_is_served_by_the_cheaper_model(
    make_sidecar: SidecarFactory, tmp_path: Path, stub: Stub, loop_thread: LoopThread
) -> None:
    # gpt-4o's estimate (200 output tokens at $10/M) is $0.002; gpt-4o-mini's is $0.00012.
    side = downgrading(make_sidecar, tmp_path, 0.001)
    calls = stub.calls
    first = side.request("POST", CHAT, chat("gpt-4o", "downgrade me"))
    assert first.status == 200, first.body
    assert first.headers["x-downgraded-from"] == "gpt-4o"
    assert first.headers["x-cache"] == "MISS"
    assert first.json()["model"].startswith("gpt-4o-mini")  # what the upstream was asked for
    assert stub.calls == calls + 1
    again = side.request("POST", CHAT, chat("gpt-4o", "downgrade me"))
    assert again.status == 200 and again.headers["x-cache"] == "HIT"
    assert again.headers["x-downgraded-from"] == "gpt-4o"
    # The entry is the cheaper model's: asking for it directly finds the same one.
    direct = side.request("POST", CHAT, chat("gpt-4o-mini", "downgrade me"))
    assert direct.headers["x-cache"] == "HIT"
    assert direct.headers["x-cache-key"] == first.headers["x-cache-key"]
    assert "x-downgraded-from" not in direct.headers
    assert stub.calls == calls + 1
    loop_thread.run(side.runtime.ledger.flush())
    rows = loop_thread.run(
        LedgerDb("sqlite", side.runtime.settings.ledger.path).fetch(
            "SELECT model, cache_status FROM ai_requests"
        )
    )
    assert [r["model"] for r in rows] == ["gpt-4o-mini"] * 3
    downgrades = side.runtime.metrics.registry.get_sample_value("sidecache_budget_downgrades_total")
    assert downgrades == 2
    assert get(side, "rate-limits")["budget_downgrades"] == 2  # what the dashboard shows


def test_still_over_with_the_cheaper_model_is_the_usual_429(
    make_sidecar: SidecarFactory, tmp_path: Path, stub: Stub
) -> None:
    side = downgrading(make_sidecar, tmp_path, 0.00001)
    calls = stub.calls
    refused = side.request("POST", CHAT, chat("gpt-4o", "too dear anyway"))
    assert refused.status == 429
    assert refused.json()["error"]["code"] == "budget_exceeded"
    assert stub.calls == calls


def test_within_budget_nothing_is_downgraded(make_sidecar: SidecarFactory, tmp_path: Path) -> None:
    side = downgrading(make_sidecar, tmp_path, 100.0)
    answer = side.request("POST", CHAT, chat("gpt-4o", "plenty"))
    assert answer.status == 200
    assert "x-downgraded-from" not in answer.headers
    assert not answer.json()["model"].startswith("gpt-4o-mini")
