"""The price list: ``genai-prices`` (the optional extra ``prices``), read into our own
price records (`filterproxy.extensions.spend.pricing`) once per model name.

``genai-prices`` keeps, per provider and model, the prices per million tokens of input,
cached input, cache writes, output and reasoning, their tiers and their changes over time,
and is updated as providers change them. Importing it costs about a quarter of a second
and some 28 MB (it brings pydantic), and pricing a request through it some 190 µs: it is
imported only when the spend extension is on, and asked once per model name, never per
request.
"""

from __future__ import annotations

import importlib.util
from datetime import UTC, date, datetime, time
from decimal import Decimal
from typing import Any, Final

from twisted.logger import Logger

from filterproxy.extensions.spend.pricing import ModelPrice, PriceSchedule, Rate, pico_per_token

__all__ = ["GENAI_PROVIDERS", "available", "genai_prices_source", "schedule_of"]

log = Logger(namespace="filterproxy.spend")

#: The gateway's provider presets by the price list's provider ids. The self-hosted ones
#: (ollama, vllm, llamacpp) have none: their models cost what the config says, or 0.
GENAI_PROVIDERS: Final[dict[str, str | None]] = {
    "openai": "openai",
    "azure": "azure",
    "anthropic": "anthropic",
    "gemini": "google",
    "groq": "groq",
    "mistral": "mistral",
    "together": "together",
    "openrouter": "openrouter",
    "xai": "x-ai",
    "deepseek": "deepseek",
    "ollama": None,
    "vllm": None,
    "llamacpp": None,
    "bedrock": "aws",
    "vertex": "google",
}


def available() -> bool:
    """Whether ``genai-prices`` is installed (without importing it)."""
    return importlib.util.find_spec("genai_prices") is not None


def _rate(value: Any) -> Rate | None:
    if value is None:
        return None
    if isinstance(value, Decimal):
        return Rate(pico_per_token(value))
    # TieredPrices: a base and (start, price) tiers, all per million tokens.
    tiers = tuple(sorted((tier.start, pico_per_token(tier.price)) for tier in value.tiers))
    return Rate(pico_per_token(value.base), tiers)


def _model_price(prices: Any) -> ModelPrice:
    """The price list's ``ModelPrice`` as ours: the token kinds the gateway counts (the
    others, audio, images, searches, are not in a provider's text usage)."""
    request = getattr(prices, "requests_kcount", None)
    return ModelPrice(
        input=_rate(prices.input_mtok) or Rate(0),
        output=_rate(prices.output_mtok) or Rate(0),
        cached_input=_rate(prices.cache_read_mtok),
        cache_write=_rate(prices.cache_write_mtok),
        cache_write_1h=_rate(prices.cache_write_1h_mtok),
        reasoning=_rate(prices.output_reasoning_mtok),
        # Dollars per thousand requests, in picodollars per request.
        request=int(request * 1_000_000_000) if isinstance(request, Decimal) else 0,
    )


def _seconds_of_day(moment: time) -> int:
    if moment.tzinfo is not None:
        moment = datetime.combine(date(1970, 1, 1), moment).astimezone(UTC).time()
    return moment.hour * 3600 + moment.minute * 60 + moment.second


def schedule_of(model: Any) -> PriceSchedule:
    """A price-list ``ModelInfo``'s standard prices over time as a `PriceSchedule`."""
    prices = model.prices
    if not isinstance(prices, list):
        return PriceSchedule.fixed(_model_price(prices))
    entries: list[tuple[int | None, tuple[int, int] | None, ModelPrice]] = []
    for conditional in prices:
        constraint = conditional.constraint
        since: int | None = None
        daily: tuple[int, int] | None = None
        start_date = getattr(constraint, "start_date", None)
        if isinstance(start_date, date):
            since = int(
                datetime(start_date.year, start_date.month, start_date.day, tzinfo=UTC).timestamp()
            )
        start_time = getattr(constraint, "start_time", None)
        end_time = getattr(constraint, "end_time", None)
        if isinstance(start_time, time) and isinstance(end_time, time):
            daily = (_seconds_of_day(start_time), _seconds_of_day(end_time))
        entries.append((since, daily, _model_price(conditional.prices)))
    return PriceSchedule(tuple(entries))


def genai_prices_source(provider: str | None, model: str) -> tuple[PriceSchedule, str] | None:
    """The price list's prices of *model* at *provider* (its id; None: the provider
    whose models it looks like), then at any provider; None when it has none."""
    from genai_prices import data_snapshot  # imported when first asked: see the module

    snapshot = data_snapshot.get_snapshot()
    for provider_id in (provider, None) if provider is not None else (None,):
        try:
            found_provider, found = snapshot.find_provider_model(model, None, provider_id, None)
            return schedule_of(found), str(found_provider.id)
        except LookupError:
            continue
        except Exception:
            # A release of the price list whose shape this reading does not know: the
            # model counts as unpriced (its warning says so), requests go on.
            log.failure("could not read the price of {model!r} from genai-prices", model=model)
            return None
    return None


def load() -> None:
    """Import the price list now (at start-up, not at the first request)."""
    from genai_prices import data_snapshot

    data_snapshot.get_snapshot()
