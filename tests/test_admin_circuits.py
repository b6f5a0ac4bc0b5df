"""Circuits on the admin API: a breaker opened by real upstream failures is listed with its
failures, and a reset closes it, answers the new states and is written to the audit table."""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest

from tests.admin_support import BASE, TOKEN, TOKENS, audit_rows, call, get
from tests.fixtures.sidecar import LoopThread, Sidecar, SidecarFactory, Stub


@pytest.fixture(params=["postgres", "sqlite"])
def ledger_env(request: pytest.FixtureRequest) -> dict[str, str]:
    if request.param == "postgres":
        return {"DATABASE_URL": request.getfixturevalue("postgres_dsn")}
    return {}


def open_chat(sidecar: Sidecar, stub: Stub) -> None:
    stub.fake.fail_next = 2
    client = sidecar.client()
    for n in range(2):
        with pytest.raises(openai.InternalServerError):
            client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": f"fail {n}"}]
            )


def as_json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def test_list_and_reset_one_breaker(
    make_sidecar: SidecarFactory, stub: Stub, loop_thread: LoopThread, ledger_env: dict[str, str]
) -> None:
    sidecar = make_sidecar(ADMIN_TOKENS=TOKENS, BREAKER_FAIL_MAX="2", **ledger_env)
    before = get(sidecar, "circuits")
    assert before["upstream"] == stub.url
    assert {c["name"]: c["state"] for c in before["circuits"]} == {
        "chat": "closed", "embeddings": "closed", "moderation": "closed", "other": "closed",
    }  # fmt: skip
    open_chat(sidecar, stub)

    listed = {c["name"]: c for c in get(sidecar, "circuits")["circuits"]}
    chat = listed["chat"]
    assert chat["state"] == "open"
    assert chat["opened_count"] == 1
    assert chat["opened_at"] is not None and chat["opened_at"].endswith("Z")
    assert chat["last_failure"]["error"] == "UpstreamFailure"
    assert chat["last_failure"]["at"].endswith("Z")
    assert listed["embeddings"]["last_failure"] is None

    answer = call(sidecar, f"{BASE}/circuits/reset", method="POST", body={"breaker": "chat"},
                  user="ops-alice")  # fmt: skip
    assert answer.status == 200, answer.body
    body = answer.json()
    assert body["reset"] == ["chat"]
    assert body["states"]["chat"] == "closed"
    assert body["audited"] is True
    assert sidecar.runtime.breakers.breakers["chat"].state == "closed"
    assert get(sidecar, "circuits")["circuits"][0]["opened_at"] is None

    rows = audit_rows(loop_thread, sidecar)
    assert len(rows) == 1
    assert (rows[0]["admin_user"], rows[0]["action"]) == ("ops-alice", "circuits.reset")
    assert as_json(rows[0]["target"]) == {"breaker": "chat"}
    detail = as_json(rows[0]["detail"])
    assert detail["before"]["chat"] == "open"
    assert detail["after"]["chat"] == "closed"
    assert rows[0]["at"] is not None


def test_reset_all_is_audited_by_token_fingerprint(
    make_sidecar: SidecarFactory, stub: Stub, loop_thread: LoopThread
) -> None:
    sidecar = make_sidecar(ADMIN_TOKENS=TOKENS, BREAKER_FAIL_MAX="2")
    open_chat(sidecar, stub)
    answer = call(sidecar, f"{BASE}/circuits/reset", method="POST")
    assert answer.status == 200, answer.body
    assert answer.json()["reset"] == ["chat", "embeddings", "moderation", "other"]
    assert set(answer.json()["states"].values()) == {"closed"}
    rows = audit_rows(loop_thread, sidecar)
    assert len(rows) == 1
    who = rows[0]["admin_user"]
    assert who.startswith("token#1:")  # TOKEN is the second configured token
    assert TOKEN not in who
    assert as_json(rows[0]["target"]) == {"breaker": None}
    # A reads-only call is never audited.
    get(sidecar, "circuits")
    assert len(audit_rows(loop_thread, sidecar)) == 1
