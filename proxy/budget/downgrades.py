"""Over-budget downgrade tables (docs/design.md §13): which cheaper model serves a request over
budget, for its tenant and user.

A budget override (table `budget_overrides`) may carry its own `downgrade_to` table, a JSON
object of model glob -> cheaper model. The most specific table there is wins whole: the user's
override's, else the tenant's override's, else the configured `[budget.downgrade_to]`. A row's
NULL table defers to the next; `{}` means no downgrade for that tenant or user. In an
override's table the longest matching glob wins (PostgreSQL's jsonb does not keep the order the
operator wrote, so the order cannot decide). A stored value that is not an object of non-empty
strings is ignored (the row defers as if NULL), logged once per value.
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Iterable, Mapping
from typing import Annotated

import msgspec

from proxy.ledger.records import BudgetOverride
from proxy.settings import BudgetSettings

log = logging.getLogger("sidecache.budget")
_Table = dict[str, Annotated[str, msgspec.Meta(min_length=1)]]
_decode = msgspec.json.Decoder(_Table).decode


class DowngradeTables:
    def __init__(self, settings: BudgetSettings) -> None:
        self._settings = settings
        self._tables: dict[tuple[str, str], dict[str, str]] = {}
        self._complained: set[tuple[str, str, str]] = set()

    def load(self, rows: Iterable[BudgetOverride]) -> None:
        """The overrides' tables, as the book has just read them (each refresh)."""
        tables: dict[tuple[str, str], dict[str, str]] = {}
        for row in rows:
            if row.downgrade_to is not None:
                table = self._parse(row)
                if table is not None:
                    tables[(row.scope, row.subject)] = table
        self._tables = tables

    def _parse(self, row: BudgetOverride) -> dict[str, str] | None:
        raw = row.downgrade_to or ""
        try:
            table = _decode(raw)
        except msgspec.DecodeError as exc:
            seen = (row.scope, row.subject, raw)
            if seen not in self._complained:  # once per value, not at every refresh
                self._complained.add(seen)
                log.warning(
                    "budget override for %s %r: downgrade_to ignored, not an object of model "
                    "globs to model names (%s)",
                    row.scope,
                    row.subject,
                    exc,
                )
            return None
        return dict(sorted(table.items(), key=lambda item: -len(item[0])))  # longest first

    def cheaper(self, tenant: str, user_id: str | None, model: str) -> str | None:
        """The model to serve `model` with, over budget, for (tenant, user_id); None: none."""
        table: Mapping[str, str] | None = None
        if user_id:
            table = self._tables.get(("user", user_id))
        if table is None:
            table = self._tables.get(("tenant", tenant))
        if table is None:
            table = self._settings.downgrade_to
        return downgrade_in(table, model)


def downgrade_in(table: Mapping[str, str], model: str) -> str | None:
    """The cheaper model the first glob of `table` matching `model` names (None: no glob
    matches, or it names `model` itself)."""
    for glob, cheaper in table.items():
        if fnmatch.fnmatchcase(model, glob):
            return cheaper if cheaper != model else None
    return None
