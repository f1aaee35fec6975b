"""Metric families an extension declares for itself, and the process's register of them.

An extension owns its metrics (as an Envoy filter keeps its stats in its config): it
declares its families once per process, through the process's `Resources` (its
``metrics``, a `MetricFamilies`), typically in a small class of its own made with
``resources.get``::

    class CacheMetrics:
        def __init__(self, resources: Resources) -> None:
            self.hits = resources.metrics.counter(
                "filterproxy_cache_hits", "Answers served from the cache, by route.", ("route",)
            )

    # in configure: the config keeps the families, its hooks count into them
    metrics = context.resources.get(CacheMetrics, CacheMetrics)
    ...
    self.config.metrics.hits.inc((route,))

The gateway's ``/metrics`` (`filterproxy.observability.metrics.Metrics`) includes every
family declared in its process in each scrape. Counting is a dictionary update; count
once per request (where the event happens, or in ``on_destroy``), never per chunk.
Label values must be bounded (config names, a fixed set of outcomes), as Prometheus
series are kept for the life of the process.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

__all__ = ["CounterFamily", "GaugeFamily", "MetricFamilies"]


class CounterFamily:
    """A counter's series, by their label values (in the order of `labels`)."""

    __slots__ = ("documentation", "labels", "name", "series")

    def __init__(self, name: str, documentation: str, labels: Sequence[str]) -> None:
        #: The name without Prometheus's ``_total`` (the exposition adds it).
        self.name = name
        self.documentation = documentation
        self.labels = tuple(labels)
        #: Label values → the count so far.
        self.series: dict[tuple[str, ...], float] = {}

    def inc(self, labels: tuple[str, ...], amount: float = 1) -> None:
        """Add *amount* to the series of *labels* (one value per label name)."""
        self.series[labels] = self.series.get(labels, 0) + amount


class GaugeFamily:
    """A gauge of one value, read when the metrics are scraped."""

    __slots__ = ("documentation", "name", "read")

    def __init__(self, name: str, documentation: str, read: Callable[[], float]) -> None:
        self.name = name
        self.documentation = documentation
        #: What gives the value at a scrape (cheap, and with no I/O).
        self.read = read


class MetricFamilies:
    """The metric families the extensions of one process declared, in their order."""

    def __init__(self) -> None:
        self._counters: dict[str, CounterFamily] = {}
        self._gauges: dict[str, GaugeFamily] = {}

    def counter(self, name: str, documentation: str, labels: Sequence[str]) -> CounterFamily:
        """The counter *name*, declared at the first call; a later call with the same
        name gets the same family (with other labels it raises ValueError)."""
        family = self._counters.get(name)
        if family is None:
            self._check_free(name)
            family = self._counters[name] = CounterFamily(name, documentation, labels)
        elif family.labels != tuple(labels):
            raise ValueError(
                f"the counter {name!r} is declared with labels {list(family.labels)}, "
                f"not {list(labels)}"
            )
        return family

    def gauge(self, name: str, documentation: str, read: Callable[[], float]) -> GaugeFamily:
        """The gauge *name*, whose value *read* gives at each scrape; declared at the
        first call (a later call with the same name gets the first one)."""
        family = self._gauges.get(name)
        if family is None:
            self._check_free(name)
            family = self._gauges[name] = GaugeFamily(name, documentation, read)
        return family

    def _check_free(self, name: str) -> None:
        if name in self._counters or name in self._gauges:
            raise ValueError(f"the metric {name!r} is declared already, of another type")

    def counters(self) -> list[CounterFamily]:
        """The counters, in the order they were declared."""
        return list(self._counters.values())

    def gauges(self) -> list[GaugeFamily]:
        """The gauges, in the order they were declared."""
        return list(self._gauges.values())
