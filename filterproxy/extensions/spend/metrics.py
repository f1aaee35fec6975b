"""The spend extension's metrics (declared once per process in `Resources.metrics`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from filterproxy.filters.metrics import MetricFamilies
from filterproxy.filters.records import Cost, TokenUsage

if TYPE_CHECKING:
    from filterproxy.filters.resources import Resources

__all__ = ["SpendMetrics"]

#: Model names kept as label values; past this many, ``other`` (a client may name
#: models a default route passes on, and Prometheus keeps every series).
MAX_MODELS: Final = 200


class SpendMetrics:
    """What the spend filter counts."""

    def __init__(self, families: MetricFamilies) -> None:
        self.cost = families.counter(
            "filterproxy_cost_usd",
            "What requests cost in dollars, from the providers' usage and the models' "
            "prices, by gateway key, team, model and provider.",
            ("key", "team", "model", "provider"),
        )
        self.unpriced = families.counter(
            "filterproxy_cost_unpriced",
            "Requests to a model with no known price (counted at 0), by model.",
            ("model",),
        )
        self.tokens = families.counter(
            "filterproxy_cost_tokens",
            "Tokens priced, by model and kind (input, cached_input, cache_write, "
            "cache_write_1h, output, reasoning; cached, written and reasoning tokens are "
            "also counted in input or output).",
            ("model", "kind"),
        )
        self._models: dict[str, str] = {}

    @classmethod
    def of(cls, resources: Resources) -> SpendMetrics:
        """The process's (declared at the first call)."""
        return resources.get(cls, lambda r: cls(r.metrics))

    def model_label(self, model: str) -> str:
        label = self._models.get(model)
        if label is None:
            if len(self._models) >= MAX_MODELS:
                return "other"  # not kept: the names past the cap would grow without end
            label = self._models[model] = model
        return label

    def count(self, key: str, team: str, cost: Cost, usage: TokenUsage | None) -> None:
        """Count one finished request."""
        model = self.model_label(cost.model) if cost.model else "none"
        self.cost.inc((key, team, model, cost.provider or "none"), cost.usd)
        if not cost.priced:
            self.unpriced.inc((model,))
        if usage is not None:
            tokens = self.tokens
            for kind, count in (
                ("input", usage.input),
                ("cached_input", usage.cached_input),
                ("cache_write", usage.cache_write),
                ("cache_write_1h", usage.cache_write_1h),
                ("output", usage.output),
                ("reasoning", usage.reasoning),
            ):
                if count:
                    tokens.inc((model, kind), count)
