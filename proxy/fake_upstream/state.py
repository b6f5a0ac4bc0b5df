"""Knobs and counters of the fake upstream: one mutable object shared by its handlers and tests."""

from __future__ import annotations

import asyncio
import collections
from typing import Annotated, Any

import msgspec
from msgspec import UNSET, UnsetType

MAX_RECORDED_REQUESTS = 1000
# Request headers that carry a credential: recorded as REDACTED unless the fake was built
# with `record_credentials=True` (tests that check which key was forwarded), and never
# answered by `/_fake/stats`.
CREDENTIAL_HEADERS = frozenset(
    {"authorization", "proxy-authorization", "api-key", "x-api-key", "cookie"}
)
REDACTED = "[redacted]"


def redact(headers: dict[str, str]) -> dict[str, str]:
    """`headers` (names lower-cased) with every credential's value replaced by REDACTED."""
    return {k: REDACTED if k in CREDENTIAL_HEADERS else v for k, v in headers.items()}


class RecordedRequest(msgspec.Struct):
    """One request as the fake received it (header names lower-cased)."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any | None


class KnobUpdate(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The body of `POST /_fake/knobs`: every field optional, unknown names rejected."""

    latency_ms: Annotated[float, msgspec.Meta(ge=0)] | UnsetType = UNSET
    chunk_delay_ms: Annotated[float, msgspec.Meta(ge=0)] | UnsetType = UNSET
    max_concurrency: Annotated[int, msgspec.Meta(ge=1)] | UnsetType | None = UNSET
    fail_next: Annotated[int, msgspec.Meta(ge=0)] | UnsetType = UNSET
    fail_status: Annotated[int, msgspec.Meta(ge=400, le=599)] | UnsetType = UNSET
    fail_retry_after: str | UnsetType | None = UNSET
    hang: bool | UnsetType = UNSET
    cut_stream_after: Annotated[int, msgspec.Meta(ge=0)] | UnsetType | None = UNSET
    gzip: bool | UnsetType = UNSET
    bad_input_marker: Annotated[str, msgspec.Meta(min_length=1)] | UnsetType = UNSET
    required_key: str | UnsetType | None = UNSET
    empty_choices: bool | UnsetType = UNSET
    drip_ms: Annotated[float, msgspec.Meta(gt=0)] | UnsetType | None = UNSET
    extra_models: frozenset[str] | UnsetType = UNSET
    prefer_tools: bool | UnsetType = UNSET
    flex_fail_status: Annotated[int, msgspec.Meta(ge=400, le=599)] | UnsetType | None = UNSET
    flex_latency_ms: Annotated[float, msgspec.Meta(ge=0)] | UnsetType = UNSET
    cached_tokens: Annotated[int, msgspec.Meta(ge=0)] | UnsetType = UNSET
    reasoning_tokens: Annotated[int, msgspec.Meta(ge=0)] | UnsetType = UNSET
    model_suffix: str | UnsetType = UNSET


KNOB_NAMES: tuple[str, ...] = KnobUpdate.__struct_fields__


class FakeUpstream:
    """Mutable knobs (set them directly or over `POST /_fake/knobs`) and call counters.

    `fail_next` counts down once per /v1 request it fails; every other knob stays in force
    until changed. `reset()` restores every knob to its default and clears the counters.
    """

    def __init__(
        self,
        *,
        latency_ms: float = 0.0,
        chunk_delay_ms: float = 0.0,
        max_concurrency: int | None = None,
        fail_next: int = 0,
        fail_status: int = 500,
        fail_retry_after: str | None = None,
        hang: bool = False,
        cut_stream_after: int | None = None,
        gzip: bool = False,
        bad_input_marker: str = "BAD_INPUT",
        required_key: str | None = None,
        empty_choices: bool = False,
        drip_ms: float | None = None,
        extra_models: frozenset[str] = frozenset(),
        prefer_tools: bool = False,
        flex_fail_status: int | None = None,
        flex_latency_ms: float = 0.0,
        cached_tokens: int = 0,
        reasoning_tokens: int = 0,
        model_suffix: str = "",
        record_credentials: bool = False,
    ) -> None:
        self.latency_ms = latency_ms
        self.chunk_delay_ms = chunk_delay_ms
        self.max_concurrency = max_concurrency
        self.fail_next = fail_next
        self.fail_status = fail_status
        self.fail_retry_after = fail_retry_after
        self.hang = hang
        self.cut_stream_after = cut_stream_after
        self.gzip = gzip
        self.bad_input_marker = bad_input_marker
        self.required_key = required_key
        # Chat and completions answer 200 with `choices: []` (not a whole answer).
        self.empty_choices = empty_choices
        # Every /v1 answer sends its headers, then one filler byte every `drip_ms` and never
        # its end, until the knob is cleared or the client leaves (a trickling upstream).
        self.drip_ms = drip_ms
        # Model names served besides the real ones in catalog.MODELS (any other is a 404).
        self.extra_models = extra_models
        # With `tools` and `tool_choice` "auto" (or absent), answer tool calls, not text.
        self.prefer_tools = prefer_tools
        # Requests at `service_tier: "flex"` only: answered with this status (429: flex
        # capacity short, as OpenAI answers it), or held this long first (a slow flex lane).
        self.flex_fail_status = flex_fail_status
        self.flex_latency_ms = flex_latency_ms
        # Chat usage reports this many prompt tokens as read from the provider's prompt cache
        # (at most the prompt), and this many reasoning tokens on top of the written ones.
        self.cached_tokens = cached_tokens
        self.reasoning_tokens = reasoning_tokens
        # Chat answers name the model asked for plus this ("-2024-07-18": the dated snapshot
        # that served an alias, as OpenAI's answers do).
        self.model_suffix = model_suffix
        # Not a knob (no HTTP call can turn it on): the process that built the fake chooses.
        self.record_credentials = record_credentials
        self.in_flight = 0
        self._semaphore: asyncio.Semaphore | None = None
        self._semaphore_size: int | None = None
        self._semaphore_loop: asyncio.AbstractEventLoop | None = None
        self._clear_counters()

    def _clear_counters(self) -> None:
        self.calls: collections.Counter[str] = collections.Counter()
        self.requests: list[RecordedRequest] = []
        self.max_in_flight = self.in_flight
        self.embedding_inputs_per_call: list[int] = []
        self.moderation_inputs_per_call: list[int] = []
        self.abandoned = 0  # held (hang, drip) requests whose client closed the connection
        # Digests of the prompt prefixes /v1/messages wrote to its "prompt cache" (cache_control).
        self.prompt_cache: set[bytes] = set()

    @property
    def total_calls(self) -> int:
        return sum(self.calls.values())

    def reset(self) -> None:
        """Knobs back to defaults, counters cleared (requests still in flight stay counted)."""
        defaults = FakeUpstream()
        for name in KNOB_NAMES:
            setattr(self, name, getattr(defaults, name))
        self._semaphore = None
        self._clear_counters()

    def apply(self, update: KnobUpdate) -> None:
        for name in KNOB_NAMES:
            value = getattr(update, name)
            if value is not UNSET:
                setattr(self, name, value)

    def knobs(self) -> dict[str, Any]:
        knobs = {name: getattr(self, name) for name in KNOB_NAMES}
        knobs["extra_models"] = sorted(self.extra_models)
        return knobs

    def record(self, method: str, path: str, headers: dict[str, str], body: Any | None) -> None:
        self.calls[path] += 1
        if not self.record_credentials:
            headers = redact(headers)
        self.requests.append(RecordedRequest(method, path, headers, body))
        if len(self.requests) > MAX_RECORDED_REQUESTS:
            del self.requests[0]

    def gate(self) -> asyncio.Semaphore | None:
        """The semaphore for the current `max_concurrency` (rebuilt when the knob changes)."""
        size = self.max_concurrency
        if size is None:
            return None
        loop = asyncio.get_running_loop()
        stale = self._semaphore_size != size or self._semaphore_loop is not loop
        if self._semaphore is None or stale:
            self._semaphore = asyncio.Semaphore(size)
            self._semaphore_size = size
            self._semaphore_loop = loop
        return self._semaphore

    def enter(self) -> None:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def leave(self) -> None:
        self.in_flight -= 1

    def take_failure(self) -> bool:
        """True (and one failure used up) when this request must fail."""
        if self.fail_next <= 0:
            return False
        self.fail_next -= 1
        return True

    def stats(self) -> dict[str, Any]:
        last = self.requests[-1] if self.requests else None
        return {
            "calls": dict(self.calls),
            "total_calls": self.total_calls,
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "embedding_inputs_per_call": list(self.embedding_inputs_per_call),
            "moderation_inputs_per_call": list(self.moderation_inputs_per_call),
            "abandoned": self.abandoned,
            "last_request": None if last is None else _answerable(last),
            "knobs": self.knobs(),
        }


def _answerable(recorded: RecordedRequest) -> Any:
    """A recorded request as `/_fake/stats` answers it: never with a credential."""
    return msgspec.to_builtins(msgspec.structs.replace(recorded, headers=redact(recorded.headers)))
