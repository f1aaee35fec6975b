"""The spend extension's prices: our integer arithmetic on the price list's prices
equals the price list's own (``genai-prices``' ``calc_price``), for the token kinds
providers price apart, tiers and changes over time included."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal

import pytest

from filterproxy.extensions.spend.pricing import (
    ModelPrice,
    PriceBook,
    PriceSchedule,
    Rate,
    cost_of,
    pico_per_token,
)
from filterproxy.filters.records import NANO_PER_USD, PriceQuote, TokenUsage

genai_prices = pytest.importorskip("genai_prices", reason="the test extra installs genai-prices")
from filterproxy.extensions.spend.source import genai_prices_source  # noqa: E402

WHEN = datetime(2026, 6, 1, 12, tzinfo=UTC)


def theirs(provider: str, model: str, usage: TokenUsage) -> int:
    """The price list's price of *usage*, in nanodollars (rounded half up)."""
    counted = genai_prices.Usage(
        input_tokens=usage.input,
        cache_read_tokens=usage.cached_input,
        cache_write_tokens=usage.cache_write,
        cache_write_1h_tokens=usage.cache_write_1h,
        output_tokens=usage.output,
        output_reasoning_tokens=usage.reasoning,
    )
    price = genai_prices.calc_price(
        counted, model, provider_id=provider, genai_request_timestamp=WHEN
    )
    nano = (price.total_price * NANO_PER_USD).quantize(Decimal(1), rounding=ROUND_HALF_UP)
    return int(nano)


def ours(provider: str, model: str, usage: TokenUsage) -> int:
    found = genai_prices_source(provider, model)
    assert found is not None, model
    schedule, _ = found
    return cost_of(model, provider, schedule.at(WHEN.timestamp()), usage, False).nano_usd


@pytest.mark.parametrize(
    ("provider", "model", "usage"),
    [
        # Cached input at its own rate.
        ("openai", "gpt-4o", TokenUsage(input=12_000, cached_input=10_240, output=733)),
        # Cache reads, five-minute and one-hour writes.
        (
            "anthropic",
            "claude-sonnet-4-5",
            TokenUsage(
                input=9_000, cached_input=4_000, cache_write=3_000, cache_write_1h=1_000, output=512
            ),
        ),
        # Reasoning tokens, part of the output.
        (
            "openai",
            "o3",
            TokenUsage(input=2_000, cached_input=1_024, output=4_000, reasoning=3_500),
        ),
        # Tiered: above the tier's start, every token at the tier's price.
        (
            "google",
            "gemini-2.5-pro",
            TokenUsage(input=250_000, cached_input=100_000, output=2_000),
        ),
        ("google", "gemini-2.5-pro", TokenUsage(input=200_000, output=2_000)),  # at the start
        (
            "anthropic",
            "claude-sonnet-4-5",
            TokenUsage(input=300_000, cached_input=50_000, cache_write=10_000, output=1_000),
        ),
    ],
)
def test_our_cost_equals_the_price_lists(provider: str, model: str, usage: TokenUsage) -> None:
    assert ours(provider, model, usage) == theirs(provider, model, usage) > 0


def test_a_tier_prices_every_token_once_the_input_is_above_its_start() -> None:
    rate = Rate(1_250_000, ((200_000, 2_500_000),))
    assert rate.at(200_000) == 1_250_000 and rate.at(200_001) == 2_500_000
    price = ModelPrice(input=rate, output=Rate(10_000_000, ((200_000, 15_000_000),)))
    assert price.cost_pico(TokenUsage(input=200_001, output=10)) == (
        200_001 * 2_500_000 + 10 * 15_000_000
    )


def test_kinds_not_priced_apart_cost_their_parents_price() -> None:
    price = ModelPrice(input=Rate(3), output=Rate(5))
    usage = TokenUsage(input=10, cached_input=4, cache_write=2, output=7, reasoning=6)
    assert price.cost_pico(usage) == 10 * 3 + 7 * 5
    apart = ModelPrice(input=Rate(3), output=Rate(5), cached_input=Rate(1), reasoning=Rate(9))
    assert apart.cost_pico(usage) == 6 * 3 + 4 * 1 + 1 * 5 + 6 * 9


def test_a_cost_is_rounded_to_the_nearest_nanodollar_and_unpriced_is_zero() -> None:
    price = ModelPrice(input=Rate(1_500), output=Rate(0))
    assert cost_of("m", "p", price, TokenUsage(input=1), False).nano_usd == 2  # 1.5 → 2
    assert cost_of("m", "p", price, TokenUsage(input=3), False).nano_usd == 5  # 4.5 → 5
    unpriced = cost_of("m", "", None, TokenUsage(input=3), True)
    assert (unpriced.nano_usd, unpriced.priced, unpriced.estimated) == (0, False, True)
    assert price.quote("m") == PriceQuote("m", 1_500, 0)
    assert pico_per_token(Decimal("0.075")) == 75_000


def test_a_schedule_follows_dated_and_daily_prices() -> None:
    old, new, night = (ModelPrice(Rate(n), Rate(n)) for n in (1, 2, 3))
    june = int(datetime(2026, 6, 1, tzinfo=UTC).timestamp())
    schedule = PriceSchedule(
        ((None, None, old), (june, None, new), (june, (22 * 3600, 2 * 3600), night))
    )
    assert schedule.at(june - 1) is old
    assert schedule.at(june + 12 * 3600) is new
    assert schedule.at(june + 23 * 3600) is night and schedule.at(june + 86_400 + 3600) is night


def test_the_book_asks_the_source_once_per_name_and_warns_once() -> None:
    asked: list[tuple[str | None, str]] = []
    warned: list[str] = []
    known = PriceSchedule.fixed(ModelPrice(Rate(1), Rate(2)))

    def source(provider: str | None, model: str) -> tuple[PriceSchedule, str] | None:
        asked.append((provider, model))
        return (known, "acme") if model == "known" else None

    own = ModelPrice(Rate(7), Rate(8))
    book = PriceBook({"mine": own}, source, warned.append)
    for _ in range(3):
        assert book.resolve("acme", "known").provider == "acme"
        assert book.resolve("acme", "unknown").schedule is None
        assert book.resolve("acme", "mine").schedule == PriceSchedule.fixed(own)
    assert asked == [("acme", "known"), ("acme", "unknown")]
    assert warned == ["unknown"]
    book.max_names = 2
    book.resolve(None, "a")
    assert len(book.found) == 2 and ("acme", "known") not in book.found  # the oldest went


def test_the_price_list_falls_back_to_any_provider_and_knows_no_made_up_model() -> None:
    found = genai_prices_source("mistral", "gpt-4o")  # not Mistral's: found at OpenAI's
    assert found is not None and found[1] == "openai"
    assert genai_prices_source("openai", "no-such-model-xyz") is None


def test_a_price_list_of_a_shape_we_do_not_know_leaves_the_model_unpriced(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from genai_prices import data_snapshot

    class Changed:
        def find_provider_model(self, *args: object) -> object:
            raise TypeError("find_provider_model() takes 2 positional arguments")

    monkeypatch.setattr(data_snapshot, "get_snapshot", Changed)
    assert genai_prices_source("openai", "gpt-4o") is None
