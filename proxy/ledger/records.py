"""One ledger record per understood request (docs/design.md §5): its fields are the columns of the
tables, and the rows the sinks write are made from them."""

from __future__ import annotations

import itertools
import secrets
import struct
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Literal

import msgspec

from proxy.vocabulary import CacheStatus, Endpoint


class RecordIds:
    """Unique record ids in UUID text form: 64 random bits drawn once per process, then a
    counter. uuid4() reads the OS's random source on every call, a syscall per request.

    Made once per request, so cheaply: the counter starts at 2**48, whose hex() is '0x1'
    followed by the counter's 12 low digits, which is the id's last group (a tenth of the
    cost of formatting them)."""

    def __init__(self) -> None:
        p = f"{secrets.randbits(64):016x}"
        self._head = f"{p[:8]}-{p[8:12]}-{p[12:16]}-"
        self._short_head = self._head + "0000-"  # while the counter's upper 16 bits are 0
        self._next = itertools.count(_SHORT)

    def __call__(self) -> str:
        n = next(self._next)
        if n < _SHORT_END:
            return self._short_head + hex(n)[3:]
        n -= _SHORT
        return "%s%04x-%012x" % (self._head, n >> 48, n & 0xFFFFFFFFFFFF)  # noqa: UP031


_SHORT = 1 << 48
_SHORT_END = _SHORT << 1
new_record_id = RecordIds()


def utc_now() -> datetime:
    return datetime.now(UTC)


class LedgerRecord(msgspec.Struct, gc=False):
    """Costs in USD. `cost` is what this request paid upstream (0 for a hit or a coalesced
    follower); `saved_cost` is what the cache avoided (the stored answer's original cost).
    Tokens are those of the call: paid for on a miss, avoided on a hit (README, "The ledger").

    The fields are the columns of `ai_requests`, in the table's order (migrations/*/001, then
    the columns later migrations append):
    COLUMNS, the sinks' COPY and INSERT statements and the packed arrays all follow it. So
    user_id and persona, before the required request_type and model, have no defaults.

    Made once per request: positional arguments cost a third of keywords (accounting.py uses
    them), and `gc=False` keeps records out of the garbage collector's scans (they hold no
    references that could form a cycle)."""

    id: str
    tenant: str
    user_id: str | None
    persona: dict[str, str]
    request_type: Endpoint
    model: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    cost: float = 0.0
    saved_cost: float = 0.0
    response_time_ms: float = 0.0
    upstream_ms: float | None = None
    cache_hit: bool = False
    cache_status: CacheStatus = CacheStatus.MISS
    status: int = 200
    created_at: datetime = msgspec.field(default_factory=utc_now)
    # Appended by migration 003 (a migration appends columns, so these come last): how a hit
    # matched, CacheMatch's value ("exact" or "semantic"; None for anything but a hit), and a
    # semantic hit's similarity to the question it was served for.
    cache_match: str | None = None
    similarity: float | None = None
    # Appended by migration 004: the prompt tokens written to the provider's prompt cache and
    # the completion tokens spent reasoning (parts of prompt_tokens and completion_tokens,
    # priced at rates of their own), and the service tier that served the call ("flex"; None:
    # standard, and any row without a call of its own).
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    service_tier: str | None = None
    # Appended by migration 005 (the report's persona advice): a digest of the request without
    # its persona scope, and the first 16 hex of the SHA-256 of the answer's body; None where
    # the proxy did not compute them.
    request_digest: str | None = None
    answer_digest: str | None = None
    # Appended by migration 006 (routing, docs/design.md §13): the upstream that answered the
    # request's own call, and the model asked for there (`model` stays the requested one; a
    # fallback may name another); None for rows without a call of their own.
    upstream: str | None = None
    served_model: str | None = None


# The column order of `ai_requests` as the sinks write it: the record's fields.
COLUMNS = tuple(field.name for field in msgspec.structs.fields(LedgerRecord))


class PackedRecord(LedgerRecord, array_like=True, gc=False):
    """A record as msgpack: an array of its fields in order, without their names (half the
    bytes of a map)."""


_encode = msgspec.msgpack.Encoder().encode
_astuple = msgspec.structs.astuple
_decode_packed = msgspec.msgpack.Decoder(list[PackedRecord]).decode
_split = msgspec.msgpack.Decoder(list[msgspec.Raw]).decode
_ARRAY16, _ARRAY32 = struct.Struct(">BH"), struct.Struct(">BI")


def pack(rec: LedgerRecord) -> bytes:
    """The record as PackedRecord's msgpack: how the writer queues, journals and hands records
    to the sinks. One small bytes object instead of a record's dozen (the queue of a busy
    replica holds thousands: measured, objects cost cache hits a few percent more). Texts with
    lone surrogates, which msgpack refuses, are cleaned here as the database would clean them."""
    try:
        return _encode(_astuple(rec))
    except UnicodeEncodeError:
        return _encode(_astuple(clean_record(rec)))


def packed_batch(packed: Sequence[bytes]) -> bytes:
    """Packed records as one msgpack array: a header, then their bytes as they are."""
    n = len(packed)
    if n < 16:
        header = bytes((0x90 | n,))
    else:
        header = _ARRAY16.pack(0xDC, n) if n < 1 << 16 else _ARRAY32.pack(0xDD, n)
    return header + b"".join(packed)


def unpack(payload: bytes) -> list[LedgerRecord]:
    """The records of a packed_batch(); raises msgspec.ValidationError (a ValueError: the
    sinks' refusal) when one of them is not a valid record."""
    return _decode_packed(payload)  # type: ignore[return-value]


def split_batch(payload: bytes) -> list[bytes]:
    """A packed_batch() back into its packed records, without decoding them."""
    return [bytes(raw) for raw in _split(payload)]


def packed_id(packed: bytes) -> str:
    """A packed record's id, for logs: read even when the rest is not a valid record."""
    try:
        return str(msgspec.msgpack.decode(packed)[0])
    except (msgspec.DecodeError, LookupError, TypeError):
        return "(unreadable)"


def as_utc(moment: datetime) -> datetime:
    """Naive datetimes are taken as UTC."""
    if moment.tzinfo is UTC:
        return moment
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


class BudgetOverride(msgspec.Struct, kw_only=True):
    """A row of `budget_overrides`: a limit of None falls back to the configured default, 0
    means unlimited. `downgrade_to` is the row's own downgrade table as stored (JSON text;
    None: the configured one applies), validated by proxy/budget/downgrades.py."""

    scope: Literal["tenant", "user"]
    subject: str
    daily_usd: float | None = None
    monthly_usd: float | None = None
    downgrade_to: str | None = None
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


def clean_optional(value: str | None) -> str | None:
    return None if value is None else clean_text(value)


def clean_persona(persona: dict[str, str]) -> dict[str, str]:
    return {clean_text(k): clean_text(v) for k, v in persona.items()} if persona else {}


Converters = Mapping[str, Callable[[Any], Any]]
Row = tuple[Any, ...]

# The client-supplied texts but persona, which each dialect stores in its own type.
TEXT_CLEANERS: Converters = {
    "tenant": clean_text,
    "user_id": clean_optional,
    "model": clean_text,
    "service_tier": clean_optional,  # the upstream may name the tier that served a call
    "served_model": clean_optional,  # the client's model when no fallback renamed it
}
# cache_match is set by the sidecar (CacheMatch), never by a client: no cleaning.
_CLEANERS: Converters = {**TEXT_CLEANERS, "persona": clean_persona}


def clean_record(rec: LedgerRecord) -> LedgerRecord:
    """The record with every client-supplied text as `clean_text` makes it."""
    cleaned = {name: clean(getattr(rec, name)) for name, clean in _CLEANERS.items()}
    return msgspec.structs.replace(rec, **cleaned)


def row_maker(name: str, converters: Converters) -> Callable[[LedgerRecord], Row]:
    """A function `name(record)` making the record's row: its fields in COLUMNS order, with
    `converters[field]` applied to each field it names and the others as they are.

    Its source is generated from COLUMNS, as dataclasses generates `__init__`: one tuple of
    attribute reads, the code of a row written out by hand, which a loop applying converters
    is markedly slower than (rows are made for every record of every flush)."""
    unknown = set(converters) - set(COLUMNS)
    if unknown:
        raise ValueError(f"not ledger columns: {sorted(unknown)}")
    namespace = {f"_{field}": convert for field, convert in converters.items()}
    values = "".join(
        f"_{field}(rec.{field}), " if field in converters else f"rec.{field}, " for field in COLUMNS
    )
    source = f"def {name}(rec):\n    return ({values})\n"
    exec(compile(source, f"<ledger row {name}>", "exec"), namespace)
    row: Callable[[LedgerRecord], Row] = namespace[name]
    return row


# The record as PostgreSQL takes it (created_at made timezone-aware UTC).
as_row = row_maker("as_row", {**_CLEANERS, "created_at": as_utc})
