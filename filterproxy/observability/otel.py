"""OpenTelemetry: a span per request, exported over OTLP/HTTP (``tracing:`` in the config).

Optional: needs ``pip install 'filterproxy[otel]'`` and is imported only when configured.
The span is started when the request head arrives, as a child of the client's
``traceparent`` when there is one; its ids become the ``traceparent`` sent upstream, so
the provider's (or a local model server's) spans hang below it. It ends with the request
and carries the GenAI attributes: operation, model, token usage, time to first token.
Spans are batched and exported from a background thread, never on the request path.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, StatusCode, TraceFlags
from twisted.internet import threads

from filterproxy.filters.records import Cost

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

    from filterproxy.chain.manager import FilterManager
    from filterproxy.config import TracingConfig

__all__ = ["SpanRecorder", "operation_name"]


class _RequestSpan:
    """The span of one request, kept in its typed state (`StreamInfo.state`)."""

    __slots__ = ("span",)

    def __init__(self, span: Any) -> None:
        self.span = span


def operation_name(path: str) -> str:
    """The GenAI operation (``gen_ai.operation.name``) a request path stands for."""
    path = path.split("?", 1)[0]
    if path.endswith(("/chat/completions", "/messages", "/responses")):
        return "chat"
    if path.endswith("/completions"):
        return "text_completion"
    if path.endswith("/embeddings"):
        return "embeddings"
    return "http"


class SpanRecorder:
    """Starts and ends the span of each request."""

    def __init__(self, config: TracingConfig) -> None:
        self.provider = TracerProvider(
            resource=Resource.create({"service.name": config.service_name})
        )
        self.provider.add_span_processor(
            BatchSpanProcessor(OTLPSpanExporter(endpoint=config.otlp_endpoint))
        )
        self.tracer = self.provider.get_tracer("filterproxy")

    def start(self, manager: FilterManager) -> None:
        context = manager.trace
        head = manager.head
        if context is None or head is None:
            return
        parent = None
        if context.parent_span_id is not None:
            remote = SpanContext(
                int(context.trace_id, 16),
                int(context.parent_span_id, 16),
                is_remote=True,
                trace_flags=TraceFlags(int(context.flags, 16)),
            )
            parent = trace.set_span_in_context(NonRecordingSpan(remote))
        span = self.tracer.start_span(
            operation_name(head.path),
            context=parent,
            kind=SpanKind.SERVER,
            attributes={"http.request.method": head.method, "url.path": head.path.split("?")[0]},
        )
        own = span.get_span_context()
        context.trace_id = f"{own.trace_id:032x}"
        context.span_id = f"{own.span_id:016x}"
        context.flags = f"{int(own.trace_flags):02x}"
        manager.stream_info.state.set(_RequestSpan(span))

    def finish(self, manager: FilterManager, duration: float) -> None:
        info = manager.stream_info
        kept = info.state.pop(_RequestSpan)
        if kept is None:
            return
        span = kept.span
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": span.name,
            "filterproxy.request_id": info.request_id,
            "filterproxy.outcome": info.outcome,
            "filterproxy.attempts": info.attempts,
        }
        optional = {
            "gen_ai.request.model": info.model,
            "gen_ai.usage.input_tokens": info.prompt_tokens,
            "gen_ai.usage.output_tokens": info.completion_tokens,
            "gen_ai.server.time_to_first_token": info.time_to_first_token,
            "http.response.status_code": info.status,
            "filterproxy.route": info.route.name if info.route is not None else None,
            "filterproxy.cluster": info.cluster,
            "filterproxy.key": info.key_name,
            "filterproxy.team": info.team_name,
            "server.address": info.endpoint,
        }
        attributes.update({k: v for k, v in optional.items() if v is not None})
        if info.has_state:
            cost = info.state.get(Cost)
            if cost is not None:
                attributes["gen_ai.usage.cost"] = cost.usd
                attributes["filterproxy.cost_priced"] = cost.priced
        span.set_attributes(attributes)
        if info.model:
            span.update_name(f"{span.name} {info.model}")
        if info.outcome not in ("complete", "local_reply") or (info.status or 0) >= 500:
            span.set_status(StatusCode.ERROR, info.error or info.outcome)
            span.set_attribute("error.type", info.outcome)
        span.end()

    def shutdown(self) -> Deferred[None]:
        """Export what is pending (in a thread: the exporter blocks) and stop."""
        return threads.deferToThread(self.provider.shutdown)
