"""The model price table (`config/pricing.toml`, USD per million tokens) and the cost of a call.

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
    """USD per million tokens."""

    input: float
    output: float = 0.0
    cached_input: float | None = None  # None: the input price
    taken: str | None = None
    source: str | None = None

    @property
    def cached_rate(self) -> float:
        return self.input if self.cached_input is None else self.cached_input


class _PriceFile(msgspec.Struct, forbid_unknown_fields=True):
    models: dict[str, ModelPrice] = {}


def default_pricing_path() -> Path:
    return config_dir() / "pricing.toml"


def read_price_file(path: Path) -> dict[str, ModelPrice]:
    """The `[models."name"]` tables of a price file; a bad file raises SettingsError."""
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
        if min(price.input, price.output, price.cached_rate) < 0:
            raise SettingsError(f"PRICING_FILE={str(path)!r}: negative price for {name!r}")
    return table.models


class PriceTable:
    def __init__(
        self,
        prices: Mapping[str, ModelPrice],
        *,
        chars_per_token: float = 4.0,
        default_output_tokens: int = 512,
    ) -> None:
        self._prices = dict(prices)
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
        prices = read_price_file(path)
        for name, item in settings.models.items():
            prices[name] = ModelPrice(
                input=item.input,
                output=item.output,
                cached_input=item.cached_input,
                taken=item.taken,
                source=item.source or "settings [pricing.models]",
            )
        return cls(
            prices,
            chars_per_token=settings.chars_per_token,
            default_output_tokens=settings.default_output_tokens,
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
        name = model.strip().lower()
        exact = self._prices.get(name)
        if exact is not None:
            return exact
        undated = _DATE_SUFFIX.sub("", name)
        if undated in self._prices:
            return self._prices[undated]
        for family in self._families:
            if undated.startswith(family + "-"):
                return self._prices[family]
        return None

    def cost(
        self, model: str, prompt_tokens: int, cached_tokens: int, completion_tokens: int
    ) -> float:
        """USD for one call: cached prompt tokens at the cached rate, the rest of the prompt
        at the input rate, completion (reasoning included) at the output rate. An unpriced
        model costs 0 and is counted."""
        price = self.price_for(model)
        if price is None:
            self._count_unpriced(model)
            return 0.0
        prompt = max(0, prompt_tokens)
        cached = min(max(0, cached_tokens), prompt)
        completion = max(0, completion_tokens)
        return (
            (prompt - cached) * price.input + cached * price.cached_rate + completion * price.output
        ) / PER_MILLION

    def estimate(self, model: str, prompt_chars: int, max_tokens: int | None = None) -> float:
        """Pre-flight USD estimate: `prompt_chars / chars_per_token` prompt tokens at the input
        rate (no prompt-cache discount assumed) plus `max_tokens` (else the configured
        `default_output_tokens`) at the output rate. Errs high: the request body's length is a
        fine `prompt_chars`. Unpriced models estimate 0 and are not counted here."""
        prompt_tokens = math.ceil(max(0, prompt_chars) / self.chars_per_token)
        return self.estimate_tokens(model, prompt_tokens, max_tokens)

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
