"""A resumable stream holds one unfinished event of the upstream's at most: past
``max_event_bytes`` the framer stops, and the stream fails with the client API's error
event (never a clean end), its client and a resumed reader alike."""

from __future__ import annotations

import json

import pytest

from filterproxy.extensions.builtin import parse_config
from filterproxy.extensions.resume import ResumeFilter
from filterproxy.extensions.resume.framing import EventFramer
from filterproxy.http.sse import SSEDecoder
from filterproxy.testing import FilterHarness

EVENT = b'data: {"choices":[{"index":0,"delta":{"content":"hi"}}]}\n\n'


@pytest.mark.parametrize("piece", [1, 100, 5000])
def test_the_framer_stops_at_the_limit_and_holds_nothing(piece: int) -> None:
    framer = EventFramer(b"s.", max_event=4096)
    stream = EVENT + b"data: " + b"x" * 10_000
    out = b""
    fed = 0
    for start in range(0, len(stream), piece):
        out += framer.feed(stream[start : start + piece])
        fed = start + piece
        if framer.too_large:
            break
    assert framer.too_large and framer.pending == b"" and not framer.more
    assert fed - len(EVENT) <= 4096 + piece  # stopped as soon as it passed
    assert out == EVENT.replace(b"\n\n", b"\nid: s.1\n\n")
    assert framer.feed(b"\n\n" + EVENT) == b""  # and frames nothing more


def test_the_framer_numbers_events_that_arrive_in_many_pieces_the_same() -> None:
    whole = EventFramer(b"s.").feed(EVENT * 3)
    framer = EventFramer(b"s.")
    long_event = b"data: " + b"y" * 50_000 + b"\n\n"
    pieces = [EVENT, b"data: ", *[b"y" * 1000] * 50, b"\n", b"\n", EVENT * 2]
    out = b"".join(framer.feed(p) for p in pieces)
    assert out == whole[: whole.index(b"\n\n") + 2] + long_event.replace(
        b"\n\n", b"\nid: s.2\n\n"
    ) + EVENT.replace(b"\n\n", b"\nid: s.3\n\n") + EVENT.replace(b"\n\n", b"\nid: s.4\n\n")


CONFIG = """
clusters: {upstream: {url: "http://upstream.test"}}
routes: [{cluster: upstream, resume: {grace: 1s}}]
max_event_bytes: 4096
"""


def test_an_event_past_the_limit_fails_the_stream_with_the_error_event() -> None:
    config = parse_config(CONFIG)
    h = FilterHarness(ResumeFilter, config=config)
    h.stream_info.route = config.routes[0]
    h.request(b'{"model": "m", "stream": true}')
    head = {"content-type": "text/event-stream"}
    h.respond(200, head, [EVENT, b"data: " + b"x" * 3000], end=False)
    assert h.client.headers is not None
    stream_id = h.client.headers.get("x-stream-id")
    assert stream_id is not None and not h.client.aborted
    h.more([b"x" * 3000], end=False)
    events = SSEDecoder().feed(h.client.body)
    assert [e.id for e in events[:1]] == [f"{stream_id}.1"]
    assert events[-1].event == "error"
    assert "max_event_bytes" in json.loads(events[-1].data or "")["error"]["message"]
    assert h.client.aborted and not h.client.ended and h.upstream.cancelled
    assert h.stream_info.outcome == "upstream_error"
    assert isinstance(h.filter, ResumeFilter)
    registry = h.filter.config.registry
    stream = registry.get(stream_id)
    assert stream is not None and stream.done  # over, not complete: no resume finishes it cleanly
    registry.evict(stream_id)
