"""Which rate limits apply to a request (docs/design.md §13): the settings' limits, replaced
per tenant or per user by an operator's override, and where each scope is counted."""

from __future__ import annotations

from collections.abc import Mapping

import msgspec

from proxy.budget.limits import hashed_part, key_part
from proxy.limits.types import Scope
from proxy.settings import RateSettings
from proxy.vocabulary import RATE_KEY_PREFIX


class LimitOverride(msgspec.Struct, frozen=True):
    """An operator's limits for one tenant or user; None keeps the setting's."""

    scope: str  # "tenant" | "user"
    id: str
    rpm: int | None = None
    tpm: int | None = None


def limited_scopes(
    settings: RateSettings,
    overrides: Mapping[tuple[str, str], LimitOverride],
    tenant: str,
    user_id: str | None,
) -> tuple[Scope, ...]:
    """The scopes of a request with some limit (none: the request is not counted at all)."""
    base = RATE_KEY_PREFIX % key_part(tenant)
    out: list[Scope] = []
    row = overrides.get(("tenant", tenant)) if overrides else None
    rpm, tpm = _limits(row, settings.tenant_rpm, settings.tenant_tpm)
    if rpm or tpm:
        out.append(Scope("tenant", f"{base}:t", rpm, tpm))
    if user_id:
        row = overrides.get(("user", user_id)) if overrides else None
        rpm, tpm = _limits(row, settings.user_rpm, settings.user_tpm)
        if rpm or tpm:  # user ids never appear in Redis keys
            out.append(Scope("user", f"{base}:u:{hashed_part(user_id)}", rpm, tpm))
    return tuple(out)


def _limits(row: LimitOverride | None, rpm: int, tpm: int) -> tuple[int, int]:
    if row is None:
        return rpm, tpm
    return (rpm if row.rpm is None else row.rpm), (tpm if row.tpm is None else row.tpm)
