"""Wire shapes of the cache mutations: invalidation (docs/design.md §3) and warming jobs."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from proxy.invalidation.selectors import Selector
from proxy.vocabulary import Endpoint

JobState = Literal["running", "done", "failed", "cancelled"]


class InvalidateBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    selectors: Annotated[list[Selector], msgspec.Meta(min_length=1, max_length=100)]


class Invalidated(msgspec.Struct):
    """Every entry stored before `generation` that matches one of `selectors` is a miss on
    every replica from now on (entries are not scanned: they are dropped as they are read,
    overwritten or expire)."""

    generation: int
    at: str
    selectors: list[Selector]
    rules_held: int  # invalidation rules this replica holds now (those younger than max TTL)
    audited: bool


# An entry's X-Cache-Key (16 hex digits), or its whole key digest (64), which names the same entry.
CacheKeyText = Annotated[
    str, msgspec.Meta(pattern="^(?:[0-9a-fA-F]{16}|[0-9a-fA-F]{64})$", min_length=16, max_length=64)
]
# Only `true` is feedback to act on: a right answer needs nothing done (`false` is a 400
# naming `wrong`, which the document says by allowing true alone).
WrongFlag = Annotated[bool, msgspec.Meta(extra_json_schema={"const": True})]


class FeedbackBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A semantic hit an operator found wrong, by the X-Cache-Key its answer carried."""

    key: CacheKeyText
    wrong: WrongFlag


class Feedback(msgspec.Struct):
    """The entry `key` (its 16-digit X-Cache-Key) is never served semantically again, on any
    replica; `indexed_here`: this replica's semantic index held it."""

    key: str
    wrong: bool
    indexed_here: bool
    audited: bool


# What a warming job sends as a header value (the key, persona values, X-Cache-Persona-Dims):
# printable ASCII, space and tab. A control character cannot be sent at all (the worker would
# fail on it), so it is a 400 at the API. The schema's `$` lets a final newline through in
# Python, so admin/cache_ops.py checks the same rule with `fullmatch`.
HEADER_TEXT = "^[\\t\\x20-\\x7e]*$"
HeaderText = Annotated[str, msgspec.Meta(pattern=HEADER_TEXT)]


class WarmPersona(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    """One persona to warm for: docs/design.md §3's dimensions (as the X-Persona-* headers take
    them) and, for `scope: user`, the user."""

    experience: HeaderText | None = None
    learning_style: HeaderText | None = None
    tone: HeaderText | None = None
    density: HeaderText | None = None
    interests: HeaderText | None = None  # comma-separated tags
    user_id: HeaderText | None = None


class WarmRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    endpoint: Endpoint
    body: dict[str, Any]


class WarmBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A job: each of `requests` for each of `personas`, sent through the proxy at low
    priority with `api_key` as the client credential (it picks the tenant; it is used for the
    calls only, never stored, logged, audited or answered)."""

    api_key: Annotated[str, msgspec.Meta(min_length=1, max_length=512, pattern=HEADER_TEXT)]
    requests: Annotated[list[WarmRequest], msgspec.Meta(min_length=1, max_length=1000)]
    personas: Annotated[list[WarmPersona], msgspec.Meta(max_length=100)] = []
    scope: Literal["persona", "user", "tenant"] | None = None  # X-Cache-Scope
    persona_dims: HeaderText | None = None  # X-Cache-Persona-Dims
    # JSON Schema counts 4.0 an integer, so the server takes it too (Warmer casts it).
    concurrency: (
        Annotated[int, msgspec.Meta(ge=1, le=16)]
        | Annotated[float, msgspec.Meta(ge=1, le=16, multiple_of=1)]
    ) = 4


class WarmJob(msgspec.Struct):
    id: str
    state: JobState
    tenant: str
    total: int
    done: int
    misses: int  # answered by the upstream and stored
    hits: int  # already cached
    coalesced: int
    errors: int
    created_at: str
    finished_at: str | None
    last_error: str | None


class WarmJobs(msgspec.Struct):
    jobs: list[WarmJob]
