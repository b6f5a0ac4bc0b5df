"""One ledger record per understood request (DESIGN §5), and its column order in the tables."""

from __future__ import annotations

import itertools
import secrets
from datetime import UTC, datetime
from typing import Any, Literal

import msgspec

RequestType = Literal["chat.completions", "completions", "embeddings", "moderations"]
CacheStatus = Literal["HIT", "MISS", "BYPASS", "COALESCED"]


class RecordIds:
    """Unique record ids in UUID text form: 64 random bits drawn once per process, then a
    counter. uuid4() reads the OS's random source on every call, a syscall per request."""

    def __init__(self) -> None:
        self._prefix = f"{secrets.randbits(64):016x}"
        self._next = itertools.count()

    def __call__(self) -> str:
        p, n = self._prefix, f"{next(self._next):016x}"
        return f"{p[:8]}-{p[8:12]}-{p[12:16]}-{n[:4]}-{n[4:]}"


new_record_id = RecordIds()


def utc_now() -> datetime:
    return datetime.now(UTC)


class LedgerRecord(msgspec.Struct, kw_only=True):
    """Costs in USD. `cost` is what this request paid upstream (0 for a hit or a coalesced
    follower); `saved_cost` is what the cache avoided (the stored answer's original cost)."""

    id: str
    tenant: str
    request_type: RequestType
    model: str
    user_id: str | None = None
    persona: dict[str, str] = {}
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    cost: float = 0.0
    saved_cost: float = 0.0
    response_time_ms: float = 0.0
    upstream_ms: float | None = None
    cache_hit: bool = False
    cache_status: CacheStatus = "MISS"
    status: int = 200
    created_at: datetime = msgspec.field(default_factory=utc_now)


# The column order of `ai_requests` as the sinks write it.
COLUMNS = (
    "id",
    "tenant",
    "user_id",
    "persona",
    "request_type",
    "model",
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "cost",
    "saved_cost",
    "response_time_ms",
    "upstream_ms",
    "cache_hit",
    "cache_status",
    "status",
    "created_at",
)


def as_row(rec: LedgerRecord) -> tuple[Any, ...]:
    """The record as a tuple in COLUMNS order (created_at made timezone-aware UTC)."""
    return (
        rec.id,
        clean_text(rec.tenant),
        None if rec.user_id is None else clean_text(rec.user_id),
        {clean_text(k): clean_text(v) for k, v in rec.persona.items()},
        rec.request_type,
        clean_text(rec.model),
        rec.prompt_tokens,
        rec.completion_tokens,
        rec.cached_tokens,
        rec.cost,
        rec.saved_cost,
        rec.response_time_ms,
        rec.upstream_ms,
        rec.cache_hit,
        rec.cache_status,
        rec.status,
        as_utc(rec.created_at),
    )


def as_utc(moment: datetime) -> datetime:
    """Naive datetimes are taken as UTC."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


class RollupKey(msgspec.Struct, frozen=True, array_like=True):
    hour: datetime
    tenant: str
    user_id: str  # '' when the request had no user
    model: str
    request_type: str


class Rollup(msgspec.Struct):
    requests: int = 0
    hits: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    cost: float = 0.0
    saved_cost: float = 0.0
    response_ms_sum: float = 0.0


def rollup_key(rec: LedgerRecord) -> RollupKey:
    hour = as_utc(rec.created_at).replace(minute=0, second=0, microsecond=0)
    user = clean_text(rec.user_id) if rec.user_id else ""
    return RollupKey(hour, clean_text(rec.tenant), user, clean_text(rec.model), rec.request_type)


def add_to(total: Rollup, rec: LedgerRecord) -> None:
    total.requests += 1
    total.hits += int(rec.cache_hit)
    total.errors += int(rec.status >= 400)
    total.prompt_tokens += rec.prompt_tokens
    total.completion_tokens += rec.completion_tokens
    total.cached_tokens += rec.cached_tokens
    total.cost += rec.cost
    total.saved_cost += rec.saved_cost
    total.response_ms_sum += rec.response_time_ms


def rollups(records: list[LedgerRecord]) -> dict[RollupKey, Rollup]:
    """The hourly roll-up rows (UTC hours) that `records` add."""
    totals: dict[RollupKey, Rollup] = {}
    for rec in records:
        key = rollup_key(rec)
        total = totals.get(key)
        if total is None:
            total = totals[key] = Rollup()
        add_to(total, rec)
    return totals


class BudgetOverride(msgspec.Struct, kw_only=True):
    """A row of `budget_overrides`: a limit of None falls back to the configured default, 0
    means unlimited."""

    scope: Literal["tenant", "user"]
    subject: str
    daily_usd: float | None = None
    monthly_usd: float | None = None
    updated_at: datetime = msgspec.field(default_factory=utc_now)


_TEXT_MAX = 512


def clean_text(value: str) -> str:
    """What a database text column accepts: no NUL, no lone surrogates (aiohttp keeps
    undecodable header bytes as surrogates), bounded length."""
    if not value.isascii():
        value = value.encode("utf-8", "replace").decode("utf-8")
    if "\x00" in value:
        value = value.replace("\x00", "")
    return value[:_TEXT_MAX]
