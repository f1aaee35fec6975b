"""The access log: one JSON line per request, through twisted.logger.

Each event carries the record as the field ``access`` (for JSON observers such as
``twistd --logger``'s or journald's) and as formatted text (the line itself). Headers are
never logged, so provider keys cannot appear here.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

from twisted.logger import Logger

if TYPE_CHECKING:
    from filterproxy.filters.api import RequestHead, StreamInfo

__all__ = ["access_record", "emit"]

log = Logger(namespace="filterproxy.access")


def _ms(seconds: float | None) -> float | None:
    return round(seconds * 1000, 1) if seconds is not None else None


def access_record(head: RequestHead | None, info: StreamInfo, duration: float) -> dict[str, Any]:
    """The access-log record of a request that ended after *duration* seconds."""
    return {
        "time": round(time.time(), 3),
        "request_id": info.request_id,
        "client": head.client_ip if head else "",
        "method": head.method if head else "",
        "path": head.path.split("?", 1)[0] if head else "",
        "model": info.model,
        "route": info.route.name if info.route else None,
        "cluster": info.cluster,
        "endpoint": info.endpoint,
        "attempts": info.attempts,
        "status": info.status,
        "bytes_in": info.bytes_in,
        "bytes_out": info.bytes_out,
        "ttfb_ms": _ms(info.time_to_first_byte),
        "ttft_ms": _ms(info.time_to_first_token),
        "duration_ms": _ms(duration),
        "prompt_tokens": info.prompt_tokens,
        "completion_tokens": info.completion_tokens,
        "outcome": info.outcome,
        "error": info.error,
        "trace_id": info.trace_id,
        "upstream_request_id": info.upstream_request_id,
    }


def emit(head: RequestHead | None, info: StreamInfo, duration: float) -> None:
    """Log the access line of a finished request."""
    record = access_record(head, info, duration)
    log.info("{access_line}", access_line=json.dumps(record, separators=(",", ":")), access=record)
