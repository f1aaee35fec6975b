"""The request body's JSON document has one owner, the chain: whichever filters change
it, in whatever order, the upstream gets one body with every change, and a later filter
sees what an earlier one made of it."""

from __future__ import annotations

import json
from typing import Any, ClassVar

import pytest

from filterproxy.filters.api import DataResult, FilterStatus, StreamFilter

from .harness import Harness, post

BASE = """
clusters:
  up: {url: "http://upstream.test:8000"}
aliases: {fast: real-model}
routes:
  - cluster: up
filters:
"""


def sent_body(h: Harness) -> dict[str, Any]:
    request = h.upstream_transport.value()
    head, _, body = request.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length")
    )
    assert len(body) == length
    return json.loads(body)  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    "chain",
    [
        ["body-accumulate", "route", "usage"],
        ["body-accumulate", "usage", "route"],
        ["route", "usage"],
    ],
)
def test_route_and_usage_both_change_the_body_in_either_order(chain: list[str]) -> None:
    entries = "".join(
        f"  - type: {name}\n" + ("    include_usage: true\n" if name == "usage" else "")
        for name in chain
    )
    h = Harness(BASE + entries)
    h.client.dataReceived(post(b'{"model": "fast", "stream": true, "messages": []}'))
    body = sent_body(h)
    assert body["model"] == "real-model"
    assert body["stream_options"] == {"include_usage": True}


def test_an_unchanged_body_goes_upstream_byte_for_byte() -> None:
    h = Harness(BASE + "  - type: body-accumulate\n  - type: route\n")
    original = b'{"model":  "real-model",\n "messages": [] }'
    h.client.dataReceived(post(original))
    assert h.upstream_transport.value().endswith(b"\r\n\r\n" + original)


class Reader(StreamFilter):
    """Records the document and the bytes it is shown."""

    seen: ClassVar[list[tuple[dict[str, Any] | None, bytes]]] = []

    def decode_data(self, data: bytes, end_stream: bool) -> DataResult:
        if end_stream:
            Reader.seen.append((self.callbacks.request_json(), data))
        return FilterStatus.CONTINUE


class Rewriter(StreamFilter):
    """Replaces the body's bytes outright (the document must follow)."""

    def decode_data(self, data: bytes, end_stream: bool) -> DataResult:
        return b'{"model": "real-model", "rewritten": true}' if end_stream else b""


def test_a_later_filter_sees_the_body_an_earlier_one_made() -> None:
    Reader.seen = []
    reader = f"{__name__}:Reader"
    rewriter = f"{__name__}:Rewriter"
    h = Harness(
        BASE
        + f"  - type: body-accumulate\n  - type: route\n  - type: {reader}\n"
        + f"  - type: {rewriter}\n  - type: {reader}\n"
    )
    h.client.dataReceived(post(b'{"model": "fast"}'))
    (first_doc, first_bytes), (second_doc, second_bytes) = Reader.seen
    assert first_doc == {"model": "real-model"} == json.loads(first_bytes)
    assert second_doc == {"model": "real-model", "rewritten": True} == json.loads(second_bytes)
    assert sent_body(h) == {"model": "real-model", "rewritten": True}
