"""The keys extension's metrics (declared once per process in `Resources.metrics`).

The requests and tokens of each key (``filterproxy_key_requests``,
``filterproxy_key_tokens``) are the gateway's own: they come from
`StreamInfo.key_name`, which any filter that names a key sets.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from filterproxy.filters.metrics import MetricFamilies

if TYPE_CHECKING:
    from filterproxy.filters.resources import Resources

__all__ = ["KeysMetrics"]


class KeysMetrics:
    """What the keys filter counts."""

    def __init__(self, families: MetricFamilies) -> None:
        self.refusals = families.counter(
            "filterproxy_key_refusals",
            "Requests refused by a gateway key's limit, by key and limit.",
            ("key", "limit"),
        )

    @classmethod
    def of(cls, resources: Resources) -> KeysMetrics:
        """The process's (declared at the first call)."""
        return resources.get(cls, lambda r: cls(r.metrics))
