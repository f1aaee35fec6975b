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


def access_record(head: RequestHead | None, info: StreamInfo) -> dict[str, Any]:
    """The access-log record of a finished request."""
    ttfb = info.time_to_first_byte
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
        "ttfb_ms": round(ttfb * 1000, 1) if ttfb is not None else None,
        "duration_ms": round((time.monotonic() - info.started) * 1000, 1),
        "outcome": info.outcome,
        "error": info.error,
    }


def emit(head: RequestHead | None, info: StreamInfo) -> None:
    """Log the access line of a finished request."""
    record = access_record(head, info)
    log.info("{access_line}", access_line=json.dumps(record, separators=(",", ":")), access=record)
