"""Log output for journald and log shippers: ``twistd --logger filterproxy.logs.json_stdout``.

One JSON object per line on standard output: ``time`` (ISO 8601, UTC), ``level``,
``namespace``, ``message`` (the formatted text) and, on access-log lines, ``access``
(the record as an object, see `filterproxy.observability.accesslog`). journald stores each line as
the entry's MESSAGE, and tools such as Loki, Vector or ``journalctl -o cat | jq`` read
the fields.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from typing import Any

from twisted.logger import FileLogObserver, formatEvent

__all__ = ["event_as_json_line", "json_stdout"]


def event_as_json_line(event: dict[str, Any]) -> str:
    """One log event as a JSON line."""
    level = event.get("log_level")
    record: dict[str, Any] = {
        "time": datetime.fromtimestamp(event.get("log_time") or 0, UTC).isoformat(
            timespec="milliseconds"
        ),
        "level": level.name if level is not None else "info",
        "namespace": event.get("log_namespace", ""),
        "message": formatEvent(event),
    }
    if "access" in event:
        record["access"] = event["access"]
    failure = event.get("log_failure")
    if failure is not None:
        record["traceback"] = failure.getTraceback()
    return json.dumps(record, default=str, separators=(",", ":")) + "\n"


def json_stdout() -> FileLogObserver:
    """The observer ``twistd --logger`` builds: JSON lines on stdout."""
    return FileLogObserver(sys.stdout, event_as_json_line)
