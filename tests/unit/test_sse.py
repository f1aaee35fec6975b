"""The SSE codec: the WHATWG parsing rules, and a stream split at every byte decodes to
the same events with the same bytes."""

from __future__ import annotations

import itertools

import pytest

from filterproxy.http.sse import SSEDecoder, SSEEvent, encode_comment, encode_event

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
