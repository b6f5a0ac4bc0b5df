"""Ledger records as SQLite rows (bound values in COLUMNS order), and a batch's roll-up rows."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec

from proxy.ledger.records import COLUMNS, TEXT_CLEANERS, Row, as_utc, clean_text, row_maker

_TEXT_MAX = 512  # records.clean_text's bound
_encode = msgspec.json.Encoder().encode
_json = msgspec.json.Encoder(order="sorted").encode
# Row positions (records.COLUMNS): a roll-up's key, what it counts, and what it sums.
_TENANT, _USER, _MODEL, _KIND, _CREATED = map(
    COLUMNS.index, ("tenant", "user_id", "model", "request_type", "created_at")
)
_HIT, _STATUS = COLUMNS.index("cache_hit"), COLUMNS.index("status")
_TOKENS = tuple(
    map(
        COLUMNS.index,
        (
            *("prompt_tokens", "completion_tokens", "cached_tokens"),
            *("cache_write_tokens", "reasoning_tokens"),
        ),
    )
)
_AMOUNTS = tuple(map(COLUMNS.index, ("cost", "saved_cost", "response_time_ms")))


def sqlite_time(moment: datetime) -> str:
    """UTC as fixed-width ISO 8601 text ('YYYY-MM-DDTHH:MM:SS.ffffffZ'): sorts in time order,
    and SQLite's date functions read it. msgspec writes it (a tenth of strftime's time), but
    leaves the fraction out when it is zero."""
    if moment.tzinfo is not UTC:
        moment = as_utc(moment)
    text = _encode(moment).decode()  # '"2026-11-24T09:00:00.123456Z"' or '"…T09:00:00Z"'
    return text[1:-1] if len(text) == 29 else text[1:20] + ".000000Z"


def persona_text(persona: dict[str, str]) -> str:
    """JSON text, keys sorted, keys and values cleaned as records.clean_text does. JSON of at
    most 512 ASCII bytes without an escaped NUL has nothing to clean, so it is kept as is."""
    if not persona:
        return "{}"
    try:
        raw = _json(persona)
    except UnicodeEncodeError:  # a lone surrogate
        raw = b""
    if raw and len(raw) <= _TEXT_MAX and raw.isascii() and b"\\u0000" not in raw:
        return raw.decode()
    return _json({clean_text(k): clean_text(v) for k, v in persona.items()}).decode()


# The record as bound values (records.as_row, in SQLite's types).
sqlite_row = row_maker(
    "sqlite_row",
    {**TEXT_CLEANERS, "persona": persona_text, "cache_hit": int, "created_at": sqlite_time},
)


def roll_ups(rows: list[Row]) -> tuple[list[Row], list[Row]]:
    """What `rows` add to the hourly roll-ups: (hour, tenant, user_id, model, request_type,
    *sums) per user and (hour, tenant, model, request_type, *sums) per tenant; sums in the
    tables' order (requests, hits, errors, prompt, completion, cached, cache-write and
    reasoning tokens, cost, saved cost, response_ms_sum). The hour is the timestamp text cut
    after the hour."""
    groups: dict[tuple[str, str, str, str, str], list[Row]] = {}
    for row in rows:
        key = (row[_CREATED][:13], row[_TENANT], row[_USER] or "", row[_MODEL], row[_KIND])
        group = groups.get(key)
        if group is None:
            groups[key] = [row]
        else:
            group.append(row)
    by_user: list[Row] = []
    by_tenant: dict[tuple[str, str, str, str], list[Any]] = {}
    for (hour, tenant, user, model, kind), group in groups.items():
        columns = list(zip(*group, strict=True))
        sums = [
            len(group),
            sum(columns[_HIT]),
            sum(1 for status in columns[_STATUS] if status >= 400),
            *(sum(columns[n]) for n in _TOKENS),
            *(sum(columns[n]) for n in _AMOUNTS),
        ]
        hour_text = hour + ":00:00.000000Z"
        by_user.append((hour_text, tenant, user, model, kind, *sums))
        total = by_tenant.get((hour_text, tenant, model, kind))
        if total is None:
            by_tenant[(hour_text, tenant, model, kind)] = sums
        else:
            total[:] = [a + b for a, b in zip(total, sums, strict=True)]
    return by_user, [(*key, *sums) for key, sums in by_tenant.items()]
