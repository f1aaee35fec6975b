"""Filter classes named by import path in the config tests."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from filterproxy.filters.api import FilterContext, FilterStatus, RequestHead, StreamFilter


class TagFilter(StreamFilter):
    """Adds a header; takes one required option, ``tag``."""

    @classmethod
    def configure(cls, options: Mapping[str, Any], context: FilterContext) -> str:
        tag = options.get("tag")
        if not isinstance(tag, str) or not tag:
            raise ValueError("option 'tag' is required and must be a non-empty string")
        return tag

    def decode_headers(self, head: RequestHead, end_stream: bool) -> FilterStatus:
        head.headers.set("x-tag", self.config)
        return FilterStatus.CONTINUE


class NotAFilter:
    pass
