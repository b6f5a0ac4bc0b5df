"""What the ledger's users need from its database (Postgres or SQLite): the writer and the
budget book (LedgerSink), and the admin API (AdminLedger)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

from proxy.ledger.records import BudgetOverride


class LedgerSink(Protocol):
    @property
    def name(self) -> str:
        """`postgres` or `sqlite`."""

    @property
    def description(self) -> str:
        """Where it writes, for logs: never a password."""

    async def migrate(self) -> list[int]:
        """Applies pending migrations; returns the versions applied."""

    async def write(self, packed: list[bytes]) -> int:
        """Inserts the records (as records.pack made them) whose ids are new and adds exactly
        those to the hourly roll-up, in one transaction; returns how many were new. Raises when
        the database fails, or refuses the data (a record that does not unpack included)."""

    def is_poison(self, exc: BaseException) -> bool:
        """True when `exc` says the data itself was refused (retrying cannot help), False
        when the database was unavailable (retry later)."""

    async def fetch_overrides(self) -> list[BudgetOverride]: ...

    async def close(self) -> None: ...


@runtime_checkable
class AdminLedger(Protocol):
    """The ledger's database as the admin API uses it: read queries for the dashboard, and
    the audit trail of admin mutations. Both sinks are one; admin checks with isinstance."""

    @property
    def name(self) -> str:
        """`postgres` or `sqlite`: the SQL dialect of the queries it runs."""

    def timestamp_param(self, moment: datetime) -> Any:
        """`moment` as a query parameter, in the form the ledger's timestamp columns hold."""

    async def fetch(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        """The rows of a read query; placeholders `$1, $2…` on postgres, `?` on sqlite."""

    async def write_audit(
        self, admin_user: str, action: str, target: dict[str, Any], detail: dict[str, Any]
    ) -> None:
        """Adds one row to `admin_audit` (who, what, on what, details; the database adds
        when). Raises when the database fails."""
