"""A stand-in for the spend filter in the budget tests: a fixed price per token, set
as the `PriceQuote` when the request arrives and charged as the `Cost` of the
provider's usage when it ends — what the keys filter reads, with prices the tests know
exactly."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from filterproxy.filters.api import (
    FilterContext,
    FilterStatus,
    HeadersResult,
    RequestHead,
    StreamFilter,
)
from filterproxy.filters.records import Cost, PriceQuote


class FixedPrice(StreamFilter):
    """Options: ``input_pico`` and ``output_pico``, picodollars per token."""

    config: PriceQuote

    @classmethod
    def configure(cls, options: Mapping[str, Any], context: FilterContext) -> PriceQuote:
        return PriceQuote("any", int(options["input_pico"]), int(options["output_pico"]))

    def decode_headers(self, head: RequestHead, end_stream: bool) -> HeadersResult:
        self.callbacks.stream_info.state.set(self.config)
        return FilterStatus.CONTINUE

    def on_destroy(self) -> None:
        info = self.callbacks.stream_info
        if info.prompt_tokens is not None and info.status is not None and info.status < 400:
            cost = self.config.estimate_nano(info.prompt_tokens, info.completion_tokens or 0)
            info.state.set(Cost("any", "mock", cost))
