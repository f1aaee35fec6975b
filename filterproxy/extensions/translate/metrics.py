"""The translate extension's metrics (declared once per process in `Resources.metrics`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from filterproxy.filters.metrics import MetricFamilies

if TYPE_CHECKING:
    from filterproxy.filters.resources import Resources

__all__ = ["TranslateMetrics"]


class TranslateMetrics:
    """What the translate filter counts."""

    def __init__(self, families: MetricFamilies) -> None:
        self.dropped_tools = families.counter(
            "filterproxy_translate_dropped_tools",
            "Hosted tools (web_search, …) left out of translated Responses requests "
            "(hosted_tools: drop), by route and tool type.",
            ("route", "tool"),
        )

    @classmethod
    def of(cls, resources: Resources) -> TranslateMetrics:
        """The process's (declared at the first call)."""
        return resources.get(cls, lambda r: cls(r.metrics))
