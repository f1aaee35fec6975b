"""The SSE codec: the WHATWG parsing rules, and a stream split at every byte decodes to
the same events with the same bytes."""

from __future__ import annotations

import itertools

import pytest

from filterproxy.http.sse import (
    EventTooLarge,
    SSEDecoder,
    SSEEvent,
    encode_comment,
    encode_event,
)

STREAM = (
    "\ufeff"
    ": a comment\n"
    "data: first\n\n"
    "event: delta\r\n"
    "id: 7\r\n"
    "data: héllo wörld ✓ 🎉\r\n"
    "data:two\r\n\r\n"
    "retry: 1500\r"
    "data\r"
    "data:  two spaces\r\r"
    ": ping\n\n"
    "id\n"
    "field-we-ignore: x\n"
    "data: last\n\n"
).encode()


def decode_all(pieces: list[bytes]) -> list[SSEEvent]:
    decoder = SSEDecoder()
    return [event for piece in pieces for event in decoder.feed(piece)]


def test_the_fields_follow_the_parsing_rules() -> None:
    events = decode_all([STREAM])
    assert [(e.event, e.id, e.retry, e.data, e.comments) for e in events] == [
        (None, None, None, "first", ("a comment",)),
        ("delta", "7", None, "héllo wörld ✓ 🎉\ntwo", ()),
        (None, None, 1500, "\n two spaces", ()),
        (None, None, None, None, ("ping",)),
        (None, "", None, "last", ()),
    ]
    assert b"".join(e.raw for e in events) == STREAM


@pytest.mark.parametrize("cut", range(1, len(STREAM)))
def test_a_stream_split_at_any_byte_decodes_the_same(cut: int) -> None:
    assert decode_all([STREAM[:cut], STREAM[cut:]]) == decode_all([STREAM])


def test_a_stream_fed_byte_by_byte_decodes_the_same() -> None:
    assert decode_all([bytes([b]) for b in STREAM]) == decode_all([STREAM])


def test_every_three_way_split_around_a_crlf_keeps_one_line_end() -> None:
    stream = b"data: a\r\n\r\ndata: b\r\n\r\n"
    whole = decode_all([stream])
    for i, j in itertools.combinations(range(1, len(stream)), 2):
        assert decode_all([stream[:i], stream[i:j], stream[j:]]) == whole


@pytest.mark.parametrize(
    "block",
    [
        b"data: x",
        b"event: delta\ndata: x",
        b"data: x\nid: s.1",
        b"event: delta\ndata: {}\nid: s.12",
        b"data: x\nid: ",
        b"data: x\nid: a\x00b",  # an id with NUL is ignored
        b"data: x\nid: 1\nid: 2",
        b"data: x\nretry: 5",
        b"id: 1\ndata: x",
        b"data: x\ndata: y",
        b"event: e\nevent: f\ndata: x",
        b"data:x\nid: 1",
        b"data: x\nid:1",
    ],
)
def test_whole_events_of_any_shape_decode_as_the_line_decoder_does(block: bytes) -> None:
    """Pieces made of whole events take a shorter path for the usual shapes: it must give
    what the line-by-line decoder gives (fed a byte at a time, it never takes that path)."""
    stream = b"data: first\n\n" + block + b"\n\n" + block + b"\n\n"
    assert decode_all([stream]) == decode_all([bytes([b]) for b in stream])


def test_an_unfinished_event_stays_pending_until_the_stream_closes() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: done\n\ndata: cut off") == [SSEEvent("done", raw=b"data: done\n\n")]
    assert decoder.pending == b"data: cut off"
    assert decoder.close() == b"data: cut off"
    assert decoder.feed(b"data: again\n\n")[0].data == "again"


def test_encoded_events_decode_to_what_was_encoded() -> None:
    raw = encode_event("line one\nline two\r\nthree", event="message_delta", id="42", retry=10)
    assert raw == (
        b"event: message_delta\nid: 42\nretry: 10\ndata: line one\ndata: line two\ndata: three\n\n"
    )
    (event,) = decode_all([raw])
    assert (event.event, event.id, event.retry, event.data) == (
        "message_delta",
        "42",
        10,
        "line one\nline two\nthree",
    )
    assert decode_all([encode_comment("keep-alive")])[0].comments == ("keep-alive",)


def test_a_field_with_a_line_break_is_refused() -> None:
    with pytest.raises(ValueError, match="line break"):
        encode_event("x", event="a\nb")


# -- the limit on one event ------------------------------------------------------------


@pytest.mark.parametrize("piece", [1, 7, 4096])
def test_a_line_that_never_ends_is_refused_at_the_limit(piece: int) -> None:
    decoder = SSEDecoder(max_event_bytes=10_000)
    stream = b"data: first\n\ndata: " + b"x" * 20_000
    fed = 0
    with pytest.raises(EventTooLarge) as raised:
        for start in range(0, len(stream), piece):
            decoder.feed(stream[start : start + piece])
            fed = start + piece
    # Raised as soon as the event passed the limit, not at the end of what came.
    assert 10_000 < fed + piece - len(b"data: first\n\n") <= 10_000 + piece
    assert "max_event_bytes" in str(raised.value) and raised.value.limit == 10_000


def test_an_event_of_many_lines_counts_them_all() -> None:
    decoder = SSEDecoder(max_event_bytes=1000)
    line = b"data: " + b"y" * 93 + b"\n"  # 100 bytes
    assert decoder.feed(line * 9 + b"\n")[0].data == "\n".join(["y" * 93] * 9)
    with pytest.raises(EventTooLarge) as raised:
        decoder.feed(b"data: z\n\n" + line * 11)
    assert [e.data for e in raised.value.events] == ["z"]  # what came before it, whole


def test_one_piece_holding_an_event_past_the_limit_is_refused_too() -> None:
    decoder = SSEDecoder(max_event_bytes=100)
    with pytest.raises(EventTooLarge):
        decoder.feed(b"data: " + b"x" * 200 + b"\n\n")


def test_events_up_to_the_limit_pass_in_any_split() -> None:
    event = b"data: " + b"x" * 94 + b"\n\n"  # 102 bytes
    stream = event * 3
    for cut in range(1, len(stream)):
        decoder = SSEDecoder(max_event_bytes=102)
        events = decoder.feed(stream[:cut]) + decoder.feed(stream[cut:])
        assert [e.raw for e in events] == [event] * 3


def test_a_long_line_in_many_pieces_decodes_the_same() -> None:
    """The pieces of a line that has not ended are kept as they came (joined once)."""
    decoder = SSEDecoder()
    pieces = [b"data: "] + [b"z" * 1024] * 4096 + [b"\r", b"\n\n"]
    events = []
    fed = 0
    for piece in pieces:
        events += decoder.feed(piece)
        fed += len(piece)
        if not events:
            assert len(decoder.pending) == fed
    assert len(events) == 1 and events[0].data == "z" * 4 * 1024 * 1024
    assert decoder.between_events
    # A CR that ended the last piece is a line end even when no line end follows it.
    assert decoder.feed(b"data: a\r") == []
    assert decoder.feed(b"\r") == []
    assert [e.data for e in decoder.feed(b"data: b")] == ["a"]
    assert decoder.pending == b"data: b"
