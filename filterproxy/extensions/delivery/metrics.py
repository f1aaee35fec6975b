"""The delivery extension's metrics (declared once per process in `Resources.metrics`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from filterproxy.filters.metrics import MetricFamilies

if TYPE_CHECKING:
    from filterproxy.filters.resources import Resources

__all__ = ["DeliveryMetrics"]


class DeliveryMetrics:
    """What the delivery filter counts (each stream once, when it ends)."""

    def __init__(self, families: MetricFamilies) -> None:
        self.coalesced = families.counter(
            "filterproxy_delivery_coalesced_streams_total",
            "Event streams coalesced into one event per window, by route and why "
            "(save_data: the client sent Save-Data; asked: x-stream-coalesce; route: the "
            "route's window).",
            ("route", "reason"),
        )
        self.slow_readers = families.counter(
            "filterproxy_delivery_slow_readers_total",
            "Event streams whose client fell behind (its connection could not take the "
            "events as they came): what it had not taken was held and sent folded.",
            ("route",),
        )
        self.folded = families.counter(
            "filterproxy_delivery_folded_events_total",
            "Events folded into others before they reached the client (a run of n deltas "
            "sent as one counts n - 1), by route.",
            ("route",),
        )
        self.bytes = families.counter(
            "filterproxy_delivery_bytes_total",
            "Bytes of the event streams the delivery filter changed, by route: the "
            "events as they came (stage=events) and as the client got them (stage=sent: "
            "folded and compressed).",
            ("route", "stage"),
        )

    @classmethod
    def of(cls, resources: Resources) -> DeliveryMetrics:
        """The process's (declared at the first call)."""
        return resources.get(cls, lambda r: cls(r.metrics))
