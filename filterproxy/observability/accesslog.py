"""The access log: one JSON line per request, through twisted.logger or to a file.

Through twisted.logger (``access_log: true``), each event carries the record as the field
``access`` (for JSON observers such as ``twistd --logger``'s or journald's) and as formatted
text (the line itself). To a file (``access_log: PATH``), `AccessLogFile` appends the lines
in batches. Headers are never logged, so provider keys cannot appear here.
"""

from __future__ import annotations

import json
import os
import time
from typing import TYPE_CHECKING, Any, Final

from twisted.internet.task import LoopingCall
from twisted.logger import Logger

if TYPE_CHECKING:
    from filterproxy.filters.api import RequestHead, StreamInfo

__all__ = [
    "FEATURE_FIELDS",
    "AccessLogFile",
    "access_record",
    "cannot_open",
    "emit",
    "open_for_append",
]

log = Logger(namespace="filterproxy.access")


#: The fields the features' records fill (`filterproxy.filters.records.LogFields`); the
#: others are the gateway's own, and a record cannot change them.
FEATURE_FIELDS: Final = frozenset({"stream", "dropped_tools", "cost_usd", "cost_priced", "cache"})


def _ms(seconds: float | None) -> float | None:
    return round(seconds * 1000, 1) if seconds is not None else None


def access_record(head: RequestHead | None, info: StreamInfo, duration: float) -> dict[str, Any]:
    """The access-log record of a request that ended after *duration* seconds.

    Its fields are fixed (documented in the operating guide); the features fill theirs
    through the records they keep in the request's state that have ``log_fields``
    (`filterproxy.filters.records.LogFields`).
    """
    record: dict[str, Any] = {
        "time": round(time.time(), 3),
        "request_id": info.request_id,
        "client": head.client_ip if head else "",
        "method": head.method if head else "",
        "path": (info.client_path or (head.path if head else "")).split("?", 1)[0],
        "model": info.model,
        "key": info.key_name,
        "team": info.team_name,
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
        # The features' fields (null unless a feature's record fills them): the
        # resumable stream the request started or resumed, and the hosted tools a
        # translated Responses request left out (hosted_tools: drop), what the request
        # cost in dollars and whether its model had a price (the spend extension), what
        # the response cache did with it (the cache extension).
        "stream": None,
        "dropped_tools": None,
        "cost_usd": None,
        "cost_priced": None,
        "cache": None,
    }
    if info.has_state:
        for value in info.state.values():
            log_fields = getattr(value, "log_fields", None)
            if log_fields is not None:
                for name, field in log_fields().items():
                    if name in FEATURE_FIELDS:
                        record[name] = field
    return record


def emit(head: RequestHead | None, info: StreamInfo, duration: float) -> None:
    """Log the access line of a finished request."""
    record = access_record(head, info, duration)
    log.info("{access_line}", access_line=json.dumps(record, separators=(",", ":")), access=record)


def open_for_append(path: str) -> int:
    """A file descriptor appending to *path*, created if missing (OSError when it cannot
    be opened)."""
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)


def cannot_open(path: str, error: OSError) -> str:
    """What to say when the access-log file cannot be opened."""
    return (
        f"cannot open {path}: {error.strerror}; check that its directory exists and the "
        "gateway's user may write there"
    )


class AccessLogFile:
    """Access-log lines appended to a file, in batches.

    Through twisted.logger a line costs about as much CPU as the request it describes
    (event dispatch, text formatting, a write and a flush per line). Here the lines gather
    in memory and leave in one ``write()`` when 64 KiB have gathered, at least once a
    second, and when the gateway stops or reloads. Each write holds whole lines and the file
    is opened with O_APPEND, so several worker processes can share one file. A reload
    reopens it: after logrotate has moved the file, lines go to a new one.
    """

    #: Bytes gathered before a write regardless of the clock.
    batch_bytes = 64 * 1024
    #: Seconds between writes of what has gathered.
    flush_interval = 1.0

    def __init__(self, path: str, reactor: Any) -> None:
        self.path = path
        self.fd = self._open()
        self.lines: list[bytes] = []
        self.size = 0
        self.failed = False
        self.loop = LoopingCall(self.flush)
        self.loop.clock = reactor

    def _open(self) -> int:
        return open_for_append(self.path)

    def start(self) -> None:
        if not self.loop.running:
            self.loop.start(self.flush_interval, now=False)

    def write(self, head: RequestHead | None, info: StreamInfo, duration: float) -> None:
        """Add the line of a finished request."""
        if self.fd < 0:
            return  # closed
        line = json.dumps(access_record(head, info, duration), separators=(",", ":")).encode()
        self.lines.append(line + b"\n")
        self.size += len(line) + 1
        if self.size >= self.batch_bytes:
            self.flush()

    def flush(self) -> None:
        """Write what has gathered."""
        if not self.lines or self.fd < 0:
            return
        data = b"".join(self.lines)
        self.lines.clear()
        self.size = 0
        try:
            while data:
                data = data[os.write(self.fd, data) :]
        except OSError as e:
            if not self.failed:  # once, not per batch: the disk stays full for a while
                log.error(
                    "access log {path}: lines lost: {error}", path=self.path, error=e.strerror
                )
            self.failed = True
        else:
            self.failed = False

    def reopen(self) -> None:
        """Write what has gathered and open the file anew (after logrotate)."""
        self.flush()
        fd = self._open()
        os.close(self.fd)
        self.fd = fd

    def close(self) -> None:
        if self.loop.running:
            self.loop.stop()
        self.flush()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
