"""The cache extension's metrics (declared once per process in `Resources.metrics`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from filterproxy.extensions.cache.flight import Flights
from filterproxy.extensions.cache.store import MemoryStore
from filterproxy.filters.metrics import MetricFamilies

if TYPE_CHECKING:
    from filterproxy.filters.resources import Resources

__all__ = ["CacheMetrics"]


class CacheMetrics:
    """What the cache filter counts, and the gauges of the process's memory store."""

    def __init__(
        self,
        families: MetricFamilies,
        store: MemoryStore | None = None,
        flights: Flights | None = None,
    ) -> None:
        self.requests = families.counter(
            "filterproxy_cache_requests",
            "Requests on cached routes, by route and result: hit (answered from the "
            "cache), miss (sent upstream), bypass (the client's Cache-Control, or a "
            "request that cannot repeat), coalesced (answered with an identical request's "
            "answer in flight).",
            ("route", "result"),
        )
        self.stored = families.counter(
            "filterproxy_cache_stored",
            "Answers stored in the cache, by route and store (memory, redis).",
            ("route", "store"),
        )
        self.unstored = families.counter(
            "filterproxy_cache_not_stored",
            "Answers of cached requests not stored, by route and reason (status: not a "
            "200; incomplete: no final event, or failed; too_large: over max_bytes).",
            ("route", "reason"),
        )
        self.served_tokens = families.counter(
            "filterproxy_cache_served_tokens",
            "Tokens the answers served from the cache or shared in flight reported (what "
            "they would have cost upstream), by route and kind (input, output).",
            ("route", "kind"),
        )
        if store is not None:
            families.gauge(
                "filterproxy_cache_memory_bytes",
                "Bytes the memory store's entries hold (limit: cache_memory).",
                lambda: float(store.held),
            )
            families.gauge(
                "filterproxy_cache_entries",
                "Entries in the memory store.",
                lambda: float(len(store.entries)),
            )
            families.gauge(
                "filterproxy_cache_evictions",
                "Entries put out of the memory store to make room, since the start.",
                lambda: float(store.evicted),
            )
        if flights is not None:
            families.gauge(
                "filterproxy_cache_in_flight",
                "Answers in flight that identical requests may join.",
                lambda: float(len(flights.flights)),
            )

    @classmethod
    def of(cls, resources: Resources) -> CacheMetrics:
        """The process's (declared at the first call)."""
        return resources.get(
            cls,
            lambda r: cls(
                r.metrics,
                r.get(MemoryStore, MemoryStore.from_resources),
                r.get(Flights, Flights.from_resources),
            ),
        )
