"""The audit trail of admin mutations (docs/design.md §6): who (X-Admin-User, else the token's index
and a short hash of it, never the token), what (action, target, detail), when (the row's `at`), in
the ledger database's `admin_audit` table."""

from __future__ import annotations

import logging
from typing import Any

from admin.auth import Caller
from proxy.ledger import AdminLedger

log = logging.getLogger("sidecache.admin")


async def audit(
    sink: object,
    caller: Caller,
    action: str,
    target: dict[str, Any],
    detail: dict[str, Any] | None = None,
) -> bool:
    """Writes one row; False (and an error log line) when the database refused it, since the
    mutation itself has already happened and its answer must still reach the caller."""
    if not isinstance(sink, AdminLedger):
        log.error("admin audit: no audit table on a %s ledger", type(sink).__name__)
        return False
    try:
        await sink.write_audit(caller.who, action, target, detail or {})
    except Exception as exc:
        log.error(
            "admin audit: cannot record %s by %s (%s: %s)",
            action,
            caller.who,
            type(exc).__name__,
            exc,
        )
        return False
    log.info("admin audit: %s by %s on %s", action, caller.who, target)
    return True
