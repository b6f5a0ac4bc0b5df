"""The model price table (`config/pricing.toml`, USD per million tokens) and the cost of a call.

Every token kind a provider bills has a rate: input, cached input (prompt-cache reads), cache
writes, output and reasoning output (each defaulting as `ModelPrice` says), and a call served
at a service tier other than the standard one (`flex`) is scaled by that tier's factor.

Lookup of a model name: the exact name; else the name without a date suffix (`-2024-07-18`,
`-0125`); else the longest listed name that is a prefix of it ending at a `-` (a family
match). A name found nowhere is unpriced: it costs 0, `cost()` counts it, and the first
`UNPRICED_NAMES_MAX` such names are kept for the admin overview (never used as metric labels).
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path

import msgspec

from proxy.settings import PricingSettings, SettingsError
from proxy.settings_load import config_dir

PER_MILLION = 1_000_000.0
UNPRICED_NAMES_MAX = 100
_RESOLVED_MAX = 4096  # memoised name lookups; client-chosen names must not grow it forever
_DATE_SUFFIX = re.compile(r"-(\d{4}-\d{2}-\d{2}|\d{4})$")


class ModelPrice(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """USD per million tokens; `tiers`: this model's service-tier factors, over the file's."""

    input: float
    output: float = 0.0
    cached_input: float | None = None  # None: the input price
    cache_write: float | None = None  # None: the input price
    reasoning: float | None = None  # None: the output price
    tiers: dict[str, float] = {}
    taken: str | None = None
    source: str | None = None

    @property
    def cached_rate(self) -> float:
        return self.input if self.cached_input is None else self.cached_input

    @property
    def cache_write_rate(self) -> float:
        return self.input if self.cache_write is None else self.cache_write

    @property
    def reasoning_rate(self) -> float:
        return self.output if self.reasoning is None else self.reasoning


class _PriceFile(msgspec.Struct, forbid_unknown_fields=True):
    tiers: dict[str, float] = {}
    models: dict[str, ModelPrice] = {}


class PriceFile(msgspec.Struct, frozen=True):
    """A price file read: its models and its service-tier factors."""

    models: dict[str, ModelPrice]
    tiers: dict[str, float]


def default_pricing_path() -> Path:
    return config_dir() / "pricing.toml"


def read_price_file(path: Path) -> dict[str, ModelPrice]:
    """The `[models."name"]` tables of a price file; a bad file raises SettingsError."""
    return read_price_tables(path).models


def read_price_tables(path: Path) -> PriceFile:
    """The `[tiers]` and `[models."name"]` tables of a price file; a bad file raises
    SettingsError."""
    try:
        with path.open("rb") as fh:
            raw = tomllib.load(fh)
        table = msgspec.convert(raw, _PriceFile)
    except OSError as exc:
        raise SettingsError(
            f"PRICING_FILE={str(path)!r}: cannot read it ({exc.strerror})"
        ) from None
    except (tomllib.TOMLDecodeError, msgspec.ValidationError) as exc:
        raise SettingsError(
            f"PRICING_FILE={str(path)!r}: not a valid price table ({exc})"
        ) from None
    for name, price in table.models.items():
        rates = (price.input, price.output, price.cached_rate, price.cache_write_rate)
        if min(*rates, price.reasoning_rate, *price.tiers.values(), 0) < 0:
            raise SettingsError(f"PRICING_FILE={str(path)!r}: negative price for {name!r}")
    if min(table.tiers.values(), default=0) < 0:
        raise SettingsError(f"PRICING_FILE={str(path)!r}: negative tier factor")
    return PriceFile(table.models, table.tiers)


class PriceTable:
    def __init__(
        self,
        prices: Mapping[str, ModelPrice],
        *,
        chars_per_token: float = 4.0,
        default_output_tokens: int = 512,
        tiers: Mapping[str, float] | None = None,
    ) -> None:
        self._prices = dict(prices)
        # Service-tier factors: a tier not listed (standard, default, auto) prices at 1.
        self.tiers = dict(tiers or {})
        # Longest first, so the first prefix that matches is the most specific family.
        self._families = sorted(self._prices, key=len, reverse=True)
        self._resolved: dict[str, ModelPrice | None] = {}
        self.chars_per_token = chars_per_token
        self.default_output_tokens = default_output_tokens
        self.unpriced_requests = 0
        self.unpriced_models: set[str] = set()

    @classmethod
    def from_settings(cls, settings: PricingSettings) -> PriceTable:
        path = Path(settings.file) if settings.file else default_pricing_path()
        read = read_price_tables(path)
        prices = read.models
        for name, item in settings.models.items():
            prices[name] = ModelPrice(
                input=item.input,
                output=item.output,
                cached_input=item.cached_input,
                cache_write=item.cache_write,
                reasoning=item.reasoning,
                taken=item.taken,
                source=item.source or "settings [pricing.models]",
            )
        return cls(
            prices,
            chars_per_token=settings.chars_per_token,
            default_output_tokens=settings.default_output_tokens,
            tiers=read.tiers,
        )

    @property
    def models(self) -> dict[str, ModelPrice]:
        return dict(self._prices)

    def price_for(self, model: str) -> ModelPrice | None:
        try:
            return self._resolved[model]
        except KeyError:
            pass
        price = self._resolve(model)
        if len(self._resolved) < _RESOLVED_MAX:
            self._resolved[model] = price
        return price

    def _resolve(self, model: str) -> ModelPrice | None:
        name = self.priced_name(model)
        return None if name is None else self._prices[name]

    def priced_name(self, model: str) -> str | None:
        """The price table's name that prices `model` (itself, undated, or its family), None
        for an unpriced model: a bounded label for metrics."""
        name = model.strip().lower()
        if name in self._prices:
            return name
        undated = _DATE_SUFFIX.sub("", name)
        if undated in self._prices:
            return undated
        for family in self._families:
            if undated.startswith(family + "-"):
                return family
        return None

    def cost(
        self,
        model: str,
        prompt_tokens: int,
        cached_tokens: int,
        completion_tokens: int,
        cache_write_tokens: int = 0,
        reasoning_tokens: int = 0,
        *,
        tier: str | None = None,
    ) -> float:
        """USD for one call. `prompt_tokens` counts every input token and `completion_tokens`
        every output token (wire.Usage's meaning): of the prompt, cached reads are priced at
        the cached rate, cache writes at the cache-write rate and the rest at the input rate;
        of the completion, reasoning at the reasoning rate and the rest at the output rate.
        Parts larger than their whole are cut to it. The sum is scaled by `tier`'s factor (1
        for no tier or an unlisted one). An unpriced model costs 0 and is counted."""
        price = self.price_for(model)
        if price is None:
            self._count_unpriced(model)
            return 0.0
        prompt = max(0, prompt_tokens)
        cached = min(max(0, cached_tokens), prompt)
        written = min(max(0, cache_write_tokens), prompt - cached)
        completion = max(0, completion_tokens)
        reasoning = min(max(0, reasoning_tokens), completion)
        usd = (
            (prompt - cached - written) * price.input
            + cached * price.cached_rate
            + written * price.cache_write_rate
            + (completion - reasoning) * price.output
            + reasoning * price.reasoning_rate
        ) / PER_MILLION
        return usd if tier is None else usd * self.tier_factor(price, tier)

    def tier_factor(self, price: ModelPrice, tier: str) -> float:
        """The model's own factor for `tier`, else the file's, else 1."""
        factor = price.tiers.get(tier)
        if factor is None:
            factor = self.tiers.get(tier, 1.0)
        return factor

    def estimate(self, model: str, prompt_chars: int, max_tokens: int | None = None) -> float:
        """Pre-flight USD estimate: `prompt_chars / chars_per_token` prompt tokens at the input
        rate (no prompt-cache discount assumed) plus `max_tokens` (else the configured
        `default_output_tokens`) at the output rate. Errs high: the request body's length is a
        fine `prompt_chars`. Unpriced models estimate 0 and are not counted here."""
        prompt_tokens = math.ceil(max(0, prompt_chars) / self.chars_per_token)
        return self.estimate_tokens(model, prompt_tokens, max_tokens)

    def token_estimate(self, prompt_chars: int, max_tokens: int | None = None) -> int:
        """The tokens `estimate` prices (the rate limits' pre-flight charge)."""
        prompt_tokens = math.ceil(max(0, prompt_chars) / self.chars_per_token)
        output = self.default_output_tokens if max_tokens is None else max(0, max_tokens)
        return prompt_tokens + output

    def estimate_tokens(self, model: str, prompt_tokens: int, max_tokens: int | None) -> float:
        price = self.price_for(model)
        if price is None:
            return 0.0
        output = self.default_output_tokens if max_tokens is None else max(0, max_tokens)
        return (max(0, prompt_tokens) * price.input + output * price.output) / PER_MILLION

    def _count_unpriced(self, model: str) -> None:
        self.unpriced_requests += 1
        if len(self.unpriced_models) < UNPRICED_NAMES_MAX:
            self.unpriced_models.add(model[:200])
