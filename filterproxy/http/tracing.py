"""Request ids and W3C trace context (``traceparent``), as plain functions.

Every request gets an id (the client's ``x-request-id`` when it is a sane token, else a
new one) that goes upstream and back to the client, and a trace context: the client's
``traceparent`` continued with a new span id for this hop, or a new trace. The upstream
receives ``traceparent: 00-<trace id>-<our span id>-<flags>``, so its spans become
children of the gateway's.
"""

from __future__ import annotations

import itertools
import os
import random
import re

__all__ = [
    "TraceContext",
    "child_context",
    "new_request_id",
    "parse_traceparent",
    "request_id_from",
]

_ID_PREFIX = os.urandom(8).hex()
_id_counter = itertools.count(1)
_random = random.Random(int.from_bytes(os.urandom(16), "big"))

#: A client's request id is used when it is 1-128 visible ASCII characters with no
#: quote or backslash (it is logged and sent on, so nothing that could break a line).
_REQUEST_ID = re.compile(r"[!#-\[\]-~]{1,128}")
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")


def new_request_id() -> str:
    """A request id unique to this process run: 32 hex digits, random prefix + counter
    (no system call per request, unlike uuid4)."""
    return f"{_ID_PREFIX}{next(_id_counter):016x}"


def request_id_from(header: str | None) -> str:
    """The client's ``x-request-id`` if it is usable, else a new id."""
    if header is not None and _REQUEST_ID.fullmatch(header):
        return header
    return new_request_id()


class TraceContext:
    """One hop's trace context."""

    __slots__ = ("flags", "parent_span_id", "span_id", "trace_id")

    def __init__(self, trace_id: str, span_id: str, parent_span_id: str | None, flags: str) -> None:
        self.trace_id = trace_id
        self.span_id = span_id
        #: The caller's span, or None when the trace starts here.
        self.parent_span_id = parent_span_id
        self.flags = flags

    def traceparent(self) -> str:
        """The ``traceparent`` header value to send upstream."""
        return f"00-{self.trace_id}-{self.span_id}-{self.flags}"


def parse_traceparent(value: str | None) -> tuple[str, str, str] | None:
    """(trace id, parent span id, flags) of a valid ``traceparent``, else None.

    Follows the W3C rules: version ff and all-zero ids are invalid; a version-00 header
    has nothing after the flags; later versions may add fields, which are ignored.
    """
    if value is None:
        return None
    match = _TRACEPARENT.fullmatch(value.strip())
    if match is None:
        return None
    version, trace_id, span_id, flags, rest = match.groups()
    if version == "ff" or (version == "00" and rest):
        return None
    if trace_id == "0" * 32 or span_id == "0" * 16:
        return None
    return trace_id, span_id, flags


def _new_span_id() -> str:
    return f"{_random.getrandbits(64) or 1:016x}"


def child_context(traceparent: str | None, sampled: bool = True) -> TraceContext:
    """This hop's context: continuing the caller's trace, or starting one (with the
    sampled flag set to *sampled*)."""
    parsed = parse_traceparent(traceparent)
    if parsed is not None:
        trace_id, parent, flags = parsed
        return TraceContext(trace_id, _new_span_id(), parent, flags)
    trace_id = f"{_random.getrandbits(128) or 1:032x}"
    return TraceContext(trace_id, _new_span_id(), None, "01" if sampled else "00")
