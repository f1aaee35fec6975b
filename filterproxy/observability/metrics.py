"""Prometheus metrics: cheap to record on the request path, exposed by `prometheus_client`.

The request path only adds to plain counters and bucket arrays owned by one process
(Twisted runs it on one thread, so no locks): a request costs one `Metrics.record_request`
call at its end plus, for streams, one `Histogram.observe` per chunk. A custom collector
turns the numbers into metric families when ``/metrics`` is scraped. Names follow the
OpenTelemetry GenAI semantic conventions where one exists
(``gen_ai.server.time_to_first_token`` → ``gen_ai_server_time_to_first_token_seconds``);
the rest are ``filterproxy_*``.

Label values are bounded: routes and clusters come from the config, and ``model`` is the
model name after alias resolution, with at most `MAX_MODEL_LABELS` distinct values per
process (then ``other``), so clients cannot grow the series without limit.

The extensions own their metrics (the keys' refusals, the resumable streams', the
translation's): they declare them in the process's `Resources.metrics`
(`filterproxy.filters.metrics.MetricFamilies`) and count into them themselves; each
scrape includes them. This module knows no extension.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from filterproxy.filters.metrics import CounterFamily, MetricFamilies

if TYPE_CHECKING:
    from filterproxy.filters.api import StreamInfo

__all__ = ["MAX_MODEL_LABELS", "Histogram", "Metrics", "status_class"]

#: Distinct values of the ``model`` label before further models are counted as ``other``.
MAX_MODEL_LABELS = 200

# Bucket upper bounds, in the metric's unit (seconds or tokens).
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0,
                2.5, 5.0, 7.5, 10.0, 30.0, 60.0)  # fmt: skip
DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24,
                    20.48, 40.96, 81.92, 163.84, 327.68)  # fmt: skip
GAP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 1.0,
               2.5, 10.0)  # fmt: skip
PER_TOKEN_BUCKETS = (0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15,
                     0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)  # fmt: skip
CONNECT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                   2.5, 5.0)  # fmt: skip
OVERHEAD_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                    0.05, 0.1)  # fmt: skip
TOKEN_BUCKETS = tuple(4.0**i for i in range(14))  # 1 .. 67,108,864 (OpenTelemetry's)


def status_class(status: int | None) -> str:
    """``2xx`` … ``5xx``, or ``none`` when no response was sent (client gone early)."""
    return f"{status // 100}xx" if status else "none"


class Histogram:
    """One series of a histogram: counts per bucket (not cumulative), sum and count."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value


class _HistogramFamily:
    def __init__(
        self, name: str, documentation: str, labels: Sequence[str], bounds: tuple[float, ...]
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labels = list(labels)
        self.bounds = bounds
        self.series: dict[tuple[str, ...], Histogram] = {}

    def get(self, labels: tuple[str, ...]) -> Histogram:
        series = self.series.get(labels)
        if series is None:
            series = self.series[labels] = Histogram(self.bounds)
        return series

    def collect(self) -> HistogramMetricFamily:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labels)
        les = [repr(float(b)) for b in self.bounds] + ["+Inf"]
        for labels, series in self.series.items():
            cumulative, buckets = 0, []
            for le, n in zip(les, series.counts, strict=True):
                cumulative += n
                buckets.append((le, float(cumulative)))
            family.add_metric(list(labels), buckets, series.total)
        return family


def _collect_counter(counter: CounterFamily) -> CounterMetricFamily:
    family = CounterMetricFamily(counter.name, counter.documentation, labels=counter.labels)
    for labels, value in counter.series.items():
        family.add_metric(list(labels), value)
    return family


class Metrics:
    """Every metric of one gateway process; survives config reloads."""

    def __init__(self, extensions: MetricFamilies | None = None) -> None:
        """*extensions*: the families the process's extensions declare
        (`Resources.metrics`), scraped with these."""
        self.extensions = extensions if extensions is not None else MetricFamilies()
        self.requests = CounterFamily(
            "filterproxy_requests",
            "Requests answered, by route, cluster, model and status class.",
            ("route", "cluster", "model", "status_class"),
        )
        self.key_requests = CounterFamily(
            "filterproxy_key_requests",
            "Requests by the gateway key that made them, and status class.",
            ("key", "status_class"),
        )
        self.key_tokens = CounterFamily(
            "filterproxy_key_tokens",
            "Tokens used by each gateway key, from the providers' usage (input, output).",
            ("key", "gen_ai_token_type"),
        )
        self.outcomes = CounterFamily(
            "filterproxy_request_outcomes",
            "How requests ended: complete, client_gone, upstream_error, timeout, "
            "local_reply, internal_error.",
            ("route", "outcome"),
        )
        self.attempts = CounterFamily(
            "filterproxy_upstream_attempts",
            "Requests sent to a cluster (first attempts, retries and fail-overs).",
            ("cluster",),
        )
        self.retries = CounterFamily(
            "filterproxy_upstream_retries",
            "Attempts that were a retry or a fail-over of an earlier failed one.",
            ("cluster",),
        )
        self.ejections = CounterFamily(
            "filterproxy_upstream_ejections",
            "Endpoints taken out of rotation by outlier detection.",
            ("cluster", "endpoint"),
        )
        self.ttft = _HistogramFamily(
            "gen_ai_server_time_to_first_token_seconds",
            "Time from the request's arrival to the first byte of the response body.",
            ("route", "cluster", "model"),
            TTFT_BUCKETS,
        )
        self.duration = _HistogramFamily(
            "gen_ai_server_request_duration_seconds",
            "Time from the request's arrival to its end.",
            ("route", "cluster", "model"),
            DURATION_BUCKETS,
        )
        self.per_output_token = _HistogramFamily(
            "gen_ai_server_time_per_output_token_seconds",
            "Time per output token after the first (streams with a usage report).",
            ("route", "model"),
            PER_TOKEN_BUCKETS,
        )
        self.tokens = _HistogramFamily(
            "gen_ai_client_token_usage",
            "Tokens per request from the provider's usage report, by gen_ai_token_type "
            "(input, output).",
            ("route", "model", "gen_ai_token_type"),
            TOKEN_BUCKETS,
        )
        self.chunk_gap = _HistogramFamily(
            "filterproxy_stream_chunk_gap_seconds",
            "Time between two pieces of a streamed response arriving from the upstream.",
            ("route",),
            GAP_BUCKETS,
        )
        self.connect = _HistogramFamily(
            "filterproxy_upstream_connect_seconds",
            "Time to get a new upstream connection (including waiting for a free one).",
            ("cluster",),
            CONNECT_BUCKETS,
        )
        self.overhead = _HistogramFamily(
            "filterproxy_gateway_overhead_seconds",
            "Time the gateway itself spent on a request: from the whole request being "
            "read to it being written upstream (waiting for a connection and retry "
            "back-off excluded), plus from the upstream's response head to its being "
            "written to the client.",
            (),
            OVERHEAD_BUCKETS,
        )
        self._models: dict[str, str] = {}
        #: The histograms of one (route, cluster, model), looked up once per request.
        self._series: dict[tuple[str, str, str], _Series] = {}
        self.overhead_series = self.overhead.get(())
        #: Requests between their head and their end, and event streams being sent.
        self.in_flight = 0
        self.open_streams = 0
        #: Gauges read at scrape time: name -> (documentation, read function).
        self.gauges: dict[str, tuple[str, Callable[[], float]]] = {
            "filterproxy_requests_in_flight": (
                "Requests between their head arriving and their end.",
                lambda: float(self.in_flight),
            ),
            "filterproxy_streams_open": (
                "Event-stream responses being sent to clients.",
                lambda: float(self.open_streams),
            ),
        }

    def model_label(self, model: str | None) -> str:
        """The ``model`` label for *model*: itself, ``none``, or ``other`` past the limit."""
        if model is None:
            return "none"
        label = self._models.get(model)
        if label is None:
            label = model if len(self._models) < MAX_MODEL_LABELS else "other"
            self._models[model] = label
        return label

    def record_request(
        self, info: StreamInfo, duration: float, overhead: float | None, streamed: bool = False
    ) -> None:
        """Count one finished request (called once, at its end). *overhead* is the
        gateway's own time on it (see ``filterproxy_gateway_overhead_seconds``), when the
        response came from an upstream; *streamed*: the response was an event stream."""
        route = info.route.name if info.route is not None else "none"
        cluster = info.cluster or "none"
        model = self.model_label(info.model)
        self.requests.inc((route, cluster, model, status_class(info.status)))
        self.outcomes.inc((route, info.outcome))
        key = info.key_name
        if key is not None:
            self._count_key(info, key)
        if info.attempts:
            self.attempts.inc((cluster,), info.attempts)
        series = self._series.get((route, cluster, model))
        if series is None:
            series = self._series[(route, cluster, model)] = _Series(self, route, cluster, model)
        series.duration.observe(duration)
        ttft = info.time_to_first_token
        if ttft is not None:
            series.ttft.observe(ttft)
        if info.prompt_tokens is not None:
            series.input_tokens.observe(info.prompt_tokens)
        completion = info.completion_tokens
        if completion is not None:
            series.output_tokens.observe(completion)
            if streamed and ttft is not None and completion > 1 and info.outcome == "complete":
                series.per_output_token.observe((duration - ttft) / (completion - 1))
        if overhead is not None:
            self.overhead_series.observe(overhead)

    def _count_key(self, info: StreamInfo, key: str) -> None:
        self.key_requests.inc((key, status_class(info.status)))
        if info.prompt_tokens:
            self.key_tokens.inc((key, "input"), info.prompt_tokens)
        if info.completion_tokens:
            self.key_tokens.inc((key, "output"), info.completion_tokens)

    def families(self) -> list[Any]:
        """The counters and histograms, the extensions' counters among them."""
        return [
            self.requests,
            self.key_requests,
            self.key_tokens,
            *self.extensions.counters(),
            self.outcomes,
            self.attempts,
            self.retries,
            self.ejections,
            self.ttft,
            self.duration,
            self.per_output_token,
            self.tokens,
            self.chunk_gap,
            self.connect,
            self.overhead,
        ]

    def registry(self) -> CollectorRegistry:
        """A registry with these metrics and the process's (CPU, memory, open files)."""
        from prometheus_client import PlatformCollector, ProcessCollector

        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Collector(self))
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        return registry


class _Series:
    """References to the histogram series one (route, cluster, model) records into."""

    __slots__ = ("duration", "input_tokens", "output_tokens", "per_output_token", "ttft")

    def __init__(self, metrics: Metrics, route: str, cluster: str, model: str) -> None:
        self.duration = metrics.duration.get((route, cluster, model))
        self.ttft = metrics.ttft.get((route, cluster, model))
        self.input_tokens = metrics.tokens.get((route, model, "input"))
        self.output_tokens = metrics.tokens.get((route, model, "output"))
        self.per_output_token = metrics.per_output_token.get((route, model))


class _Collector(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        metrics = self.metrics
        for name, (documentation, read) in metrics.gauges.items():
            yield GaugeMetricFamily(name, documentation, value=read())
        for gauge in metrics.extensions.gauges():
            yield GaugeMetricFamily(gauge.name, gauge.documentation, value=gauge.read())
        for family in metrics.families():
            if isinstance(family, CounterFamily):
                yield _collect_counter(family)
            else:
                yield family.collect()
