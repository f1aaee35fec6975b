"""The spend extension's config: the top-level ``spend`` section.

::

    spend:
      prices_source: genai-prices     # or none; default: genai-prices when installed
      header: true                    # tell a streaming client its cost (an SSE comment)
      prices:                         # per model name, dollars per million tokens
        my-llama: {input: 0.2, output: 0.6}
        gpt-4o: {input: 2.0, output: 8.0, cached_input: 0.5}   # a negotiated rate

The spend filter is first in the default chain when the config has a ``spend`` section,
or gateway keys (their dollar budgets are charged with what it prices).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from types import MappingProxyType
from typing import Final

from filterproxy.config import ChainFacts, DefaultEntry, ExtensionSchema, Node, Section
from filterproxy.extensions.spend.pricing import ModelPrice, Rate
from filterproxy.extensions.spend.source import available

__all__ = ["SOURCES", "SpendSettings", "parse_price", "parse_section", "schema"]

#: Where prices come from, besides the config's own.
SOURCES: Final = ("genai-prices", "none")
_PRICE_FIELDS: Final = {
    "input",
    "output",
    "cached_input",
    "cache_write",
    "cache_write_1h",
    "reasoning",
}
_SECTION_KEYS: Final = {"prices", "prices_source", "header"}


@dataclass(frozen=True)
class SpendSettings:
    """The ``spend`` section (`Config.section(SpendSettings)`); its field names are what
    the effective config shows."""

    #: Whether the config has a ``spend`` section (it puts the filter in the chain).
    configured: bool = False
    #: Prices by model name (the config's own), over the price list's.
    prices: Mapping[str, ModelPrice] = field(default_factory=lambda: MappingProxyType({}))
    #: ``genai-prices`` or ``none``; None: genai-prices when it is installed.
    prices_source: str | None = None
    #: Whether a streaming client is told the request's cost at the end of its stream.
    header: bool = True


def _per_token(node: Node) -> Rate:
    """Dollars per million tokens (``2.5``, ``"0.075"``), as picodollars per token."""
    value = node.value
    problem = f"expected a price in dollars per million tokens (such as 2.5), got {value!r}"
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise node.error(problem)
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        raise node.error(problem) from None
    if not amount.is_finite() or amount < 0:
        raise node.error(f"expected a price of 0 or more, got {value!r}")
    pico = amount * 1_000_000
    if pico != pico.to_integral_value():
        raise node.error(f"{value!r}: at most six decimals (a picodollar per token)")
    return Rate(int(pico))


def parse_price(node: Node) -> ModelPrice:
    """One model's ``{input, output, cached_input, cache_write, cache_write_1h,
    reasoning}`` in dollars per million tokens; input and output required, the others
    priced as input (cache reads and writes) or output (reasoning) when absent."""
    keys = node.mapping(_PRICE_FIELDS)
    for required in ("input", "output"):
        if required not in keys:
            raise node.error(f"missing {required!r} (dollars per million tokens)")
    rates = {name: _per_token(value) for name, value in keys.items()}
    return ModelPrice(
        input=rates["input"],
        output=rates["output"],
        cached_input=rates.get("cached_input"),
        cache_write=rates.get("cache_write"),
        cache_write_1h=rates.get("cache_write_1h"),
        reasoning=rates.get("reasoning"),
    )


def parse_section(section: Section) -> SpendSettings:
    """``spend``: its prices, where the others come from, and the header option."""
    if "spend" not in section:
        return SpendSettings()
    keys = section["spend"].mapping(_SECTION_KEYS)
    prices: dict[str, ModelPrice] = {}
    if "prices" in keys:
        for model, node in keys["prices"].items():
            prices[model] = parse_price(node)
    source: str | None = None
    if "prices_source" in keys:
        node = keys["prices_source"]
        source = node.string()
        if source not in SOURCES:
            raise node.error(f"expected one of: {', '.join(SOURCES)}; got {source!r}")
        if source == "genai-prices" and not available():
            raise node.error(
                "genai-prices is not installed: install filterproxy[prices], or set "
                "prices_source: none and give the prices under spend.prices"
            )
    header = keys["header"].boolean() if "header" in keys else True
    return SpendSettings(True, MappingProxyType(prices), source, header)


def schema(with_keys: Callable[[ChainFacts], bool]) -> ExtensionSchema:
    """What the spend extension adds to the config. *with_keys* says whether gateway
    keys are in the default chain (the catalog knows; this extension does not import
    theirs): they charge dollar budgets with the cost it sets, so it goes with them.

    Listed after the keys extension in the catalog, so that its place at the start of
    the chain is taken after theirs: spend's ``on_destroy`` (which prices the request)
    runs before the keys filter's (which charges it)."""

    def place(facts: ChainFacts) -> DefaultEntry | None:
        settings = facts.section(SpendSettings)
        if (settings is not None and settings.configured) or with_keys(facts):
            return DefaultEntry("spend", first=True, asks={"usage": {"include_usage": True}})
        return None

    return ExtensionSchema(
        name="spend", keys=frozenset({"spend"}), parse=parse_section, place=place
    )
