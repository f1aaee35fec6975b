"""The resume extension's metrics (declared once per process in `Resources.metrics`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from filterproxy.extensions.resume.streams import StreamRegistry
from filterproxy.filters.metrics import MetricFamilies

if TYPE_CHECKING:
    from filterproxy.filters.resources import Resources

__all__ = ["ResumeMetrics"]


class ResumeMetrics:
    """What the resume filter counts, and the gauge of what the process's streams hold
    (declared with a *registry*)."""

    def __init__(self, families: MetricFamilies, registry: StreamRegistry | None = None) -> None:
        self.resumes = families.counter(
            "filterproxy_stream_resumes",
            "Requests to resume a stream, by the stream's route and outcome (resumed, gone: 410).",
            ("route", "outcome"),
        )
        self.grace_expiries = families.counter(
            "filterproxy_stream_grace_expiries",
            "Resumable streams whose client did not come back within resume.grace (the "
            "upstream was stopped).",
            ("route",),
        )
        if registry is not None:
            budget = registry.budget
            families.gauge(
                "filterproxy_resume_buffer_bytes",
                "Bytes the resumable streams' buffers hold (limit: resume_buffers).",
                lambda: float(budget.held),
            )

    @classmethod
    def of(cls, resources: Resources) -> ResumeMetrics:
        """The process's (declared at the first call)."""
        return resources.get(
            cls, lambda r: cls(r.metrics, r.get(StreamRegistry, StreamRegistry.from_resources))
        )
