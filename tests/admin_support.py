"""Helpers for the admin API tests: authenticated calls to a sidecar's admin port."""

from __future__ import annotations

from typing import Any

from tests.fixtures.sidecar import HttpAnswer, LoopThread, Sidecar
from tests.ledger_db import LedgerDb

TOKENS = "admin-token-alpha-123,admin-token-bravo-456"
TOKEN = "admin-token-bravo-456"
BASE = "/api/admin/dashboard"


def call(
    sidecar: Sidecar,
    path: str,
    *,
    method: str = "GET",
    body: bytes | dict[str, Any] | None = None,
    token: str | None = TOKEN,
    user: str | None = None,
) -> HttpAnswer:
    headers = {"Authorization": f"Bearer {token}" if token else ""}
    if user is not None:
        headers["X-Admin-User"] = user
    return sidecar.request(method, path, body, headers, admin=True)


def get(sidecar: Sidecar, path: str, **kw: Any) -> Any:
    answer = call(sidecar, f"{BASE}/{path}", **kw)
    assert answer.status == 200, answer.body
    return answer.json()


def ledger_of(sidecar: Sidecar) -> LedgerDb:
    ledger = sidecar.runtime.settings.ledger
    if ledger.database_url:
        return LedgerDb("postgres", ledger.database_url)
    return LedgerDb("sqlite", ledger.path)


def audit_rows(loop_thread: LoopThread, sidecar: Sidecar) -> list[dict[str, Any]]:
    sql = "SELECT admin_user, action, target, detail, at FROM admin_audit ORDER BY id"
    return loop_thread.run(ledger_of(sidecar).fetch(sql))
