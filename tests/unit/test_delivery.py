"""The delivery filter in the real chain (`filterproxy.testing.FilterHarness`, its clock):
Save-Data and x-stream-coalesce coalescing, compression flushed per write, a slow client's
events held and folded, and byte-exact pass-through when nobody asks."""

from __future__ import annotations

import json
import zlib
from typing import Any

import brotli
import pytest
import zstandard

from filterproxy.config import ConfigError
from filterproxy.extensions.builtin import parse_config
from filterproxy.extensions.delivery.codings import available_codings, choose_coding
from filterproxy.extensions.delivery.config import DeliveryConfig
from filterproxy.extensions.delivery.filter import DeliveryFilter
from filterproxy.extensions.delivery.pacing import BadWindow, Window, parse_window, window_for
from filterproxy.filters.records import EventFolds
from filterproxy.http.sse import SSEDecoder
from filterproxy.testing import FilterHarness

SSE = {"content-type": "text/event-stream"}


def chunk(text: str | None = None, *, role: bool = False, finish: str | None = None) -> bytes:
    delta: dict[str, Any] = {"role": "assistant", "content": ""} if role else {}
    if text is not None:
        delta["content"] = text
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    document = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "choices": [choice]}
    return b"data: " + json.dumps(document, separators=(",", ":")).encode() + b"\n\n"


WORDS = ["Hel", "lo", ",", " wor", "ld", "!", " How", " are", " you", "?"]
STREAM = [chunk(role=True), *(chunk(w) for w in WORDS), chunk(finish="stop"), b"data: [DONE]\n\n"]


def text_of(body: bytes) -> str:
    """The content a chat client assembles from *body*."""
    text = []
    for event in SSEDecoder().feed(body):
        if event.data is None or event.data == "[DONE]":
            continue
        delta = json.loads(event.data)["choices"][0]["delta"]
        text.append(delta.get("content") or "")
    return "".join(text)


def gunzip(body: bytes) -> bytes:
    return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(body)


def harness(headers: dict[str, str] | None = None) -> FilterHarness:
    h = FilterHarness(DeliveryFilter)
    h.request(b'{"model":"m","stream":true}', headers=headers or {})
    return h


def test_without_a_request_the_stream_passes_byte_for_byte() -> None:
    h = harness({"accept-encoding": "gzip, br, zstd"})
    client = h.respond(200, SSE, STREAM)
    assert client.pieces == STREAM  # one write per upstream piece, unchanged
    assert client.headers is not None and client.headers.get("content-encoding") is None
    assert client.headers.get("x-stream-coalesce") is None
    assert h.upstream.head is not None
    assert h.upstream.head.headers.get("accept-encoding") == "gzip, br, zstd"  # not narrowed


def test_save_data_coalesces_each_window_and_compresses_flushed() -> None:
    h = harness({"save-data": "on", "accept-encoding": "gzip"})
    assert h.upstream.head is not None
    # The events are read here: the upstream is asked for them uncompressed.
    assert h.upstream.head.headers.get("accept-encoding") == "identity"
    client = h.respond(200, SSE, STREAM[:2], end=False)  # role chunk, first word
    assert client.headers is not None
    assert client.headers.get("content-encoding") == "gzip"
    assert client.headers.get("x-stream-coalesce") == "250ms"
    inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
    # The first token is not held: both went at once, each decodable as it came.
    assert text_of(b"".join(inflate.decompress(p) for p in client.pieces)) == "Hel"
    sent = len(client.pieces)
    h.clock.advance(0.05)
    h.more(STREAM[2:6], end=False)  # four words within the window: held
    assert len(client.pieces) == sent
    h.clock.advance(0.2)  # the window ends: one write, one folded event
    assert len(client.pieces) == sent + 1
    window = inflate.decompress(client.pieces[-1])
    assert [e.data is not None for e in SSEDecoder().feed(window)] == [True]
    assert text_of(window) == "".join(WORDS[1:5])
    h.more(STREAM[6:])
    assert client.ended
    body = gunzip(client.body)
    assert text_of(body) == "".join(WORDS)
    assert body.endswith(b"data: [DONE]\n\n")
    events = [e for e in SSEDecoder().feed(body) if e.data is not None]
    assert len(events) < len(STREAM)


def test_an_asked_window_is_held_within_the_route_bounds() -> None:
    config = DeliveryConfig()
    assert parse_window("150ms") == pytest.approx(0.15)
    assert parse_window("0.5s") == 0.5
    assert parse_window("80") == pytest.approx(0.08)
    assert parse_window("off") == 0.0
    for bad in ("soon", "-5ms", "1e3", ""):
        with pytest.raises(BadWindow):
            parse_window(bad)
    assert window_for(config, False, 0.01) == config.min_window
    assert window_for(config, False, 10.0) == config.max_window
    assert window_for(config, True, None) == config.save_data
    assert window_for(config, True, 0.0) is None  # the client turned it off
    assert window_for(config, False, None) is None
    assert window_for(DeliveryConfig(window=0.3), False, None) == 0.3
    window = Window(0.2)
    assert window.wait(5.0) == 0.0
    window.sent(5.0)
    assert window.wait(5.05) == pytest.approx(0.15)
    assert window.wait(5.3) == 0.0


def test_x_stream_coalesce_sets_the_window_and_a_bad_one_is_refused_in_the_api_shape() -> None:
    h = harness({"x-stream-coalesce": "100ms"})
    assert h.upstream.head is not None
    assert h.upstream.head.headers.get("x-stream-coalesce") is None  # not the provider's
    client = h.respond(200, SSE, STREAM)
    assert client.headers is not None and client.headers.get("x-stream-coalesce") == "100ms"
    assert client.headers.get("content-encoding") is None  # the client accepts none
    assert text_of(client.body) == "".join(WORDS)
    for path, key in (("/v1/chat/completions", "error"), ("/v1/messages", "type")):
        h = FilterHarness(DeliveryFilter)
        h.request(b"{}", path=path, headers={"x-stream-coalesce": "whenever"})
        assert h.client.status == 400 and not h.upstream.reached
        document = h.client.json()
        assert key in document and "x-stream-coalesce" in json.dumps(document)


@pytest.mark.parametrize(
    ("accept", "coding"),
    [
        ("gzip, deflate, br, zstd", "zstd"),
        ("gzip, br", "br"),
        ("gzip;q=1, zstd;q=0", "gzip"),
        ("*", "zstd"),
        ("identity", None),
        (None, None),
    ],
)
def test_the_coding_is_the_routes_first_that_the_client_accepts(
    accept: str | None, coding: str | None
) -> None:
    assert choose_coding(accept, ("zstd", "br", "gzip"), tuple(available_codings())) == coding


@pytest.mark.parametrize("coding", ["br", "zstd"])
def test_br_and_zstd_streams_decode_write_by_write(coding: str) -> None:
    h = harness({"x-stream-coalesce": "100ms", "accept-encoding": coding})
    client = h.respond(200, SSE, STREAM[:3], end=False)
    assert client.headers is not None and client.headers.get("content-encoding") == coding
    if coding == "br":
        decoder: Any = brotli.Decompressor()
        decode = decoder.process
    else:
        decoder = zstandard.ZstdDecompressor().decompressobj()
        decode = decoder.decompress
    seen = b"".join(decode(piece) for piece in client.pieces)
    assert text_of(seen) == WORDS[0]  # all that was sent is readable now (the rest waits)
    h.clock.advance(1)
    assert text_of(seen + decode(client.pieces[-1])) == "".join(WORDS[:2])
    h.more(STREAM[3:])
    if coding == "br":
        whole = brotli.decompress(client.body)
    else:
        whole = zstandard.ZstdDecompressor().decompressobj().decompress(client.body)
    assert text_of(whole) == "".join(WORDS)


def test_a_client_that_falls_behind_gets_what_it_missed_folded() -> None:
    h = harness()
    client = h.respond(200, SSE, STREAM[:2], end=False)
    assert client.pieces == STREAM[:2]
    h.client_slow()
    h.more(STREAM[2:8], end=False)
    assert client.pieces == STREAM[:2]  # held here, not in a socket buffer
    assert h.producer.paused is False  # under `hold`: the upstream goes on
    h.client_ready()
    caught_up = client.pieces[2:]
    assert len(caught_up) == 1
    assert len([e for e in SSEDecoder().feed(caught_up[0])]) == 1
    assert text_of(caught_up[0]) == "".join(WORDS[1:7])
    h.more(STREAM[8:])
    assert client.pieces[-len(STREAM[8:]) :] == STREAM[8:]  # caught up: byte for byte again
    assert text_of(client.body) == "".join(WORDS)


def test_past_hold_the_upstream_is_paused_until_the_client_takes_more() -> None:
    config = parse_config(
        "clusters: {upstream: {url: 'http://u.test'}}\ndelivery: {hold: 16384}\n", environ={}
    )
    h = FilterHarness(DeliveryFilter, config=config)
    h.request(b"{}")
    h.respond(200, SSE, STREAM[:1], end=False)
    h.client_slow()
    many = [chunk("x" * 100) for _ in range(200)]
    h.more(many, end=False)
    assert h.producer.paused is True
    h.client_ready()
    assert h.producer.paused is False
    h.more([chunk(finish="stop")])
    assert text_of(h.client.body) == "x" * 100 * 200


def test_a_client_that_falls_behind_mid_event_gets_the_rest_of_it_first() -> None:
    h = harness()
    first, second = STREAM[1][:20], STREAM[1][20:]
    client = h.respond(200, SSE, [STREAM[0], first], end=False)
    h.client_slow()
    h.more([second, *STREAM[2:5]], end=False)
    h.client_ready()
    assert client.body.startswith(STREAM[0] + first + second)
    assert text_of(client.body) == "".join(WORDS[:4])


def test_a_failure_sends_what_is_held_then_the_error_never_a_clean_end() -> None:
    h = harness({"x-stream-coalesce": "1s"})
    client = h.respond(200, SSE, STREAM[:2], end=False)
    h.more([*STREAM[2:4], STREAM[4][:15]], end=False)  # two whole words, half a third
    h.fail(502, "the upstream went away", "upstream_error")
    assert client.aborted and not client.ended
    events = SSEDecoder().feed(client.body)
    assert events[-1].event == "error"
    assert text_of(b"".join(e.raw for e in events[:-1])) == "".join(WORDS[:3])


def test_a_heartbeat_in_a_silence_goes_compressed_and_nothing_waits_for_it() -> None:
    h = harness({"save-data": "on", "accept-encoding": "gzip"})
    client = h.respond(200, SSE, STREAM[:2], end=False)
    sent = len(client.pieces)
    h.heartbeat()
    assert len(client.pieces) == sent + 1
    assert gunzip(client.body).endswith(b": keep-alive\n")


def test_folds_are_told_to_whoever_counts_the_clients_chunks() -> None:
    told: list[tuple[str | None, int]] = []
    h = harness({"x-stream-coalesce": "200ms"})
    h.stream_info.state.set(EventFolds(lambda last, covers: told.append((last, covers))))
    numbered = [e[:-1] + b"id: s.%d\n\n" % (n + 1) for n, e in enumerate(STREAM)]
    h.respond(200, SSE, numbered[:2], end=False)
    h.more(numbered[2:6], end=False)
    h.clock.advance(0.2)
    assert told == [("s.6", 4)]
    assert SSEDecoder().feed(h.client.body)[-1].id == "s.6"


def test_a_response_that_is_not_an_event_stream_or_is_compressed_passes() -> None:
    h = harness({"save-data": "on", "accept-encoding": "gzip"})
    client = h.respond(200, {"content-type": "application/json"}, [b'{"a":', b"1}"])
    assert client.pieces == [b'{"a":', b"1}"]
    h = harness({"save-data": "on", "accept-encoding": "gzip"})
    coded = zlib.compress(b"".join(STREAM))
    client = h.respond(200, {**SSE, "content-encoding": "deflate"}, [coded])
    assert client.pieces == [coded]


def test_the_config_names_the_key_that_is_wrong() -> None:
    base = "clusters: {upstream: {url: 'http://u.test'}}\n"
    for text, path in (
        ("delivery: {save_data: 2m}", "delivery.save_data"),
        ("delivery: {compress: [lzma]}", "delivery.compress[0]"),
        ("delivery: {min_window: 2s, max_window: 1s}", "delivery.min_window"),
        ("delivery: {hold: 10}", "delivery.hold"),
        ("delivery: {speed: fast}", "delivery"),
        ("routes: [{cluster: upstream, delivery: {window: soon}}]", "routes[0].delivery.window"),
    ):
        with pytest.raises(ConfigError) as raised:
            parse_config(base + text, environ={})
        assert str(raised.value).startswith(path), (text, str(raised.value))
    off = parse_config(base + "delivery: off\n", environ={})
    assert "delivery" not in [f.type_name for f in off.filters]


def test_a_window_holds_at_most_hold_bytes_and_an_overlong_event_fails_the_stream() -> None:
    config = parse_config(
        "clusters: {upstream: {url: 'http://u.test'}}\nmax_event_bytes: 4096\n"
        "delivery: {hold: 16384}\n",
        environ={},
    )
    h = FilterHarness(DeliveryFilter, config=config)
    h.request(b"{}", headers={"x-stream-coalesce": "2s"})
    client = h.respond(200, SSE, STREAM[:2], end=False)
    sent = len(client.pieces)
    h.more([chunk("x" * 100) for _ in range(100)], end=False)  # 20 KB within one window
    assert len(client.pieces) > sent  # sent before the window's end: past `hold`
    text = text_of(client.body)
    assert text.startswith(WORDS[0]) and set(text[len(WORDS[0]) :]) == {"x"}
    assert len(text) - len(WORDS[0]) >= 100 * 70  # most of it, folded; the rest waits
    h.more([b"data: " + b"y" * 5000], end=False)  # an event past max_event_bytes, unended
    assert client.aborted and not client.ended
    last = SSEDecoder().feed(client.body)[-1]
    assert last.event == "error" and "max_event_bytes" in (last.data or "")
