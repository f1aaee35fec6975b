"""The keys extension's metrics (declared once per process in `Resources.metrics`).

Refusals by a key's limits (and by its team's, counted for the key and for the team),
and soft budgets crossed. The requests and tokens of each key (``filterproxy_key_requests``,
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
            "Requests refused by a gateway key's limit or its team's, by key and limit.",
            ("key", "limit"),
        )
        self.team_refusals = families.counter(
            "filterproxy_team_refusals",
            "Requests refused by a team's limit (shared by its keys), by team and limit.",
            ("team", "limit"),
        )
        self.budget_alerts = families.counter(
            "filterproxy_budget_alerts",
            "Soft dollar budgets crossed (once per window across all gateways), by "
            "subject (key or team), its name and the window (day or month).",
            ("subject", "name", "window"),
        )

    @classmethod
    def of(cls, resources: Resources) -> KeysMetrics:
        """The process's (declared at the first call)."""
        return resources.get(cls, lambda r: cls(r.metrics))
