"""What a model costs, and what a request's usage of it came to: the spend extension's
pure core (no I/O, no price list: `filterproxy.extensions.spend.source` reads one).

Prices are kept per token in picodollars (10^-12 USD), as integers, so a request's cost
is integer arithmetic: the price list is read once per model name (`PriceBook`), never
per request.

The arithmetic is the price list's (``genai-prices``): each kind of token priced apart
is taken out of its parent kind and priced at its own rate (cache reads and writes out
of the input, the writes kept an hour out of the writes, reasoning out of the output);
a kind not priced apart costs what its parent does. A tiered rate applies its tier's
price to every token of its kind once the request's whole input (cached included) is
above the tier's start, not only to the tokens above it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Final

from filterproxy.filters.records import PICO_PER_NANO, Cost, PriceQuote, TokenUsage

__all__ = [
    "ModelPrice",
    "PriceBook",
    "PriceSchedule",
    "Rate",
    "Resolved",
    "cost_of",
    "pico_per_token",
]

#: Picodollars per token in a dollar per million tokens.
_PICO_PER_USD_PER_MTOK: Final = 1_000_000
#: Seconds in a day.
_DAY: Final = 86_400


def pico_per_token(usd_per_million: Decimal) -> int:
    """A price in dollars per million tokens, in picodollars per token (to the nearest
    picodollar: price lists write at most six decimals, which is exact)."""
    return int((usd_per_million * _PICO_PER_USD_PER_MTOK).to_integral_value(ROUND_HALF_EVEN))


@dataclass(frozen=True, slots=True)
class Rate:
    """A price per token (picodollars), with the tiers a price list may give it."""

    base: int
    #: (start, price): from a request whose input is above *start* tokens, every token
    #: of this kind costs *price*; ascending by start.
    tiers: tuple[tuple[int, int], ...] = ()

    def at(self, total_input: int) -> int:
        """The price per token for a request of *total_input* input tokens."""
        for start, price in reversed(self.tiers):
            if total_input > start:
                return price
        return self.base


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """One model's prices. A kind of token with no rate of its own (None) is priced as
    its parent kind: cached input and cache writes as input, writes kept an hour as
    cache writes, reasoning as output."""

    input: Rate
    output: Rate
    cached_input: Rate | None = None
    #: Writes to the prompt cache (Anthropic's five-minute ones, or all when no
    #: one-hour rate is given) and those kept an hour.
    cache_write: Rate | None = None
    cache_write_1h: Rate | None = None
    reasoning: Rate | None = None
    #: Picodollars per request, whatever its tokens (a few price lists charge one).
    request: int = 0

    def cost_pico(self, usage: TokenUsage) -> int:
        """What *usage* costs at these prices, in picodollars."""
        total = usage.input
        input_left = usage.input
        pico = self.request
        if self.cached_input is not None:
            input_left -= usage.cached_input
            pico += usage.cached_input * self.cached_input.at(total)
        written = usage.cache_write
        if self.cache_write_1h is not None:
            input_left -= usage.cache_write_1h
            written -= usage.cache_write_1h
            pico += usage.cache_write_1h * self.cache_write_1h.at(total)
        if self.cache_write is not None:
            written = max(written, 0)
            input_left -= written
            pico += written * self.cache_write.at(total)
        pico += max(input_left, 0) * self.input.at(total)
        output_left = usage.output
        if self.reasoning is not None:
            output_left -= usage.reasoning
            pico += usage.reasoning * self.reasoning.at(total)
        pico += max(output_left, 0) * self.output.at(total)
        return pico

    def quote(self, model: str) -> PriceQuote:
        """The base price per input and output token, for admission's estimate."""
        return PriceQuote(model, self.input.base, self.output.base)


@dataclass(frozen=True, slots=True)
class PriceSchedule:
    """A model's prices over time: a price list may change a model's price from a
    date on, or price the hours of a day apart (off-peak rates).

    Each entry holds when it applies: ``(since, daily, price)`` with *since* the first
    second (Unix time) it applies from, or None, and *daily* a ``(start, end)`` window
    of seconds after midnight UTC (``end < start`` wraps midnight), or None. As in the
    price list, the last entry that applies wins; none: the first one.
    """

    entries: tuple[tuple[int | None, tuple[int, int] | None, ModelPrice], ...]

    def at(self, now: float) -> ModelPrice:
        """The price in force at *now* (Unix time)."""
        entries = self.entries
        if len(entries) == 1:
            return entries[0][2]
        for since, daily, price in reversed(entries):
            if since is not None and now < since:
                continue
            if daily is not None:
                start, end = daily
                second = int(now) % _DAY
                inside = start <= second < end if start <= end else second >= start or second < end
                if not inside:
                    continue
            return price
        return entries[0][2]

    @classmethod
    def fixed(cls, price: ModelPrice) -> PriceSchedule:
        return cls(((None, None, price),))


def cost_of(
    model: str, provider: str, price: ModelPrice | None, usage: TokenUsage, estimated: bool
) -> Cost:
    """The `Cost` of *usage* at *price* (None: the model has no known price, it costs 0),
    in nanodollars rounded to the nearest (half up)."""
    if price is None:
        return Cost(model, provider, 0, priced=False, estimated=estimated)
    pico = price.cost_pico(usage)
    return Cost(model, provider, (pico + PICO_PER_NANO // 2) // PICO_PER_NANO, True, estimated)


@dataclass(frozen=True, slots=True)
class Resolved:
    """A model name's prices as the book found them, kept for the next request."""

    #: None: no price known for it.
    schedule: PriceSchedule | None
    #: The provider it is priced as (the price list's id), "" when unknown.
    provider: str


#: A price list: (provider id or None, model name) → its schedule and the provider it
#: was found under, or None when it has no price for the model.
PriceSource = Callable[[str | None, str], tuple[PriceSchedule, str] | None]


class PriceBook:
    """The prices of the models a gateway meets: the config's own (by model name) over
    a price list's, each name looked up once and kept (up to `max_names`).

    *source* is asked the first time a (provider, model) is met; what it answers — its
    prices, or that it has none — is kept, so a request costs a dictionary look-up.
    `unpriced` is called once per model name that has no price.
    """

    max_names = 4096

    def __init__(
        self,
        overrides: Mapping[str, ModelPrice],
        source: PriceSource | None,
        unpriced: Callable[[str], None] = lambda model: None,
    ) -> None:
        self.overrides = {
            model: Resolved(PriceSchedule.fixed(price), "") for model, price in overrides.items()
        }
        self.source = source
        self.unpriced = unpriced
        self.found: dict[tuple[str | None, str], Resolved] = {}
        #: The model names already warned about (bounded as `found` is).
        self.warned: set[str] = set()

    def resolve(self, provider: str | None, model: str) -> Resolved:
        """The prices of *model* served by *provider* (a price-list id; None: any)."""
        own = self.overrides.get(model)
        if own is not None:
            return own
        key = (provider, model)
        found = self.found.get(key)
        if found is not None:
            return found
        answer = self.source(provider, model) if self.source is not None else None
        if answer is None:
            found = Resolved(None, provider or "")
            if model not in self.warned:
                if len(self.warned) >= self.max_names:
                    self.warned.clear()
                self.warned.add(model)
                self.unpriced(model)
        else:
            found = Resolved(answer[0], answer[1])
        if len(self.found) >= self.max_names:
            del self.found[next(iter(self.found))]  # the oldest name goes first
        self.found[key] = found
        return found
