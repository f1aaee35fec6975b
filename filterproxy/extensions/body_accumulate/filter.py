"""body-accumulate: hold the request until its whole body is here, within a limit.

Routing reads the body's ``model``, and retries replay the body, so the body is
collected first. The limit is enforced while it arrives: a ``Content-Length`` over the
limit is refused before a byte of the body is read, and a body that grows past it
(chunked uploads) is cut off. Both get 413; nothing reaches the upstream.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from filterproxy.config import DEFAULT_MAX_REQUEST_BYTES, Node
from filterproxy.filters.api import FilterContext, FilterStatus, RequestHead, StreamFilter

__all__ = ["BodyAccumulateConfig", "BodyAccumulateFilter"]


@dataclass(frozen=True)
class BodyAccumulateConfig:
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES


class BodyAccumulateFilter(StreamFilter):
    """Collects the request body up to ``max_request_bytes`` (default 10 MiB)."""

    provides = ("body-accumulate",)

    config: BodyAccumulateConfig

    @classmethod
    def configure(cls, options: Mapping[str, Any], context: FilterContext) -> BodyAccumulateConfig:
        keys = Node(dict(options), context.path, context.environ).mapping({"max_request_bytes"})
        if "max_request_bytes" in keys:
            return BodyAccumulateConfig(keys["max_request_bytes"].integer(minimum=0))
        return BodyAccumulateConfig()

    @classmethod
    def buffer_limit(cls, config: BodyAccumulateConfig) -> int | None:
        return config.max_request_bytes

    def __init__(self, config: BodyAccumulateConfig) -> None:
        super().__init__(config)
        self.received = 0

    def decode_headers(self, head: RequestHead, end_stream: bool) -> FilterStatus:
        if end_stream:
            return FilterStatus.CONTINUE
        declared = head.headers.get("content-length")
        if (
            declared is not None
            and declared.isdigit()
            and int(declared) > self.config.max_request_bytes
        ):
            self._too_large(f"Content-Length {declared}")
        # Hold the headers too: nothing goes upstream before the whole body is here.
        return FilterStatus.STOP_ITERATION

    def decode_data(self, data: bytes, end_stream: bool) -> FilterStatus:
        self.received += len(data)
        if self.received > self.config.max_request_bytes:
            self._too_large(f"more than {self.config.max_request_bytes} bytes")
            return FilterStatus.STOP_ITERATION
        return FilterStatus.CONTINUE if end_stream else FilterStatus.STOP_ITERATION_AND_BUFFER

    def _too_large(self, what: str) -> None:
        self.callbacks.send_local_reply(
            413,
            f"request body too large ({what}); this gateway accepts at most "
            f"{self.config.max_request_bytes} bytes (body-accumulate max_request_bytes)",
            code="request_too_large",
        )
