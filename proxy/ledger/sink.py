"""What the ledger writer and the budget book need from a database (Postgres or SQLite)."""

from __future__ import annotations

from typing import Protocol

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

    async def save_override(self, override: BudgetOverride) -> None: ...

    async def close(self) -> None: ...
