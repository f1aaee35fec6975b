"""The benchmark's HTTP/2 side: the HTTP/2 mock upstream (bench/h2_upstream.py) answers as
the HTTP/1.1 one does, the gateway's config for it, the report's rows, and the check that
a "before" tree really provides the gateway."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import DataReceived, StreamEnded, StreamReset
from h2.settings import SettingCodes, Settings

from bench.loadgen import EVENT
from bench.peers import PeerUnavailable, check_source_tree
from bench.run import SATURATED, _saturation_note, fmt, h2_upstream_rows
from bench.upstream import COMPLETION
from filterproxy.extensions.builtin import load_config

ROOT = Path(__file__).resolve().parents[2]
PATH = "/v1/chat/completions"


def start_mock(*program: str) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, *program, "--port", "0"], stdout=subprocess.PIPE, text=True, cwd=ROOT
    )
    assert process.stdout is not None
    return process


@pytest.fixture(scope="module")
def mocks() -> Iterator[tuple[int, int]]:
    """The HTTP/1.1 mock's port and the HTTP/2 mock's."""
    processes = [start_mock("bench/upstream.py"), start_mock("-m", "bench.h2_upstream")]
    try:
        ports = []
        for process in processes:
            assert process.stdout is not None
            ports.append(int(process.stdout.readline().split()[1]))
        yield ports[0], ports[1]
    finally:
        for process in processes:
            process.terminate()
            process.wait()


def post(client: httpx.Client, port: int, body: bytes, **headers: str) -> httpx.Response:
    return client.post(
        f"http://127.0.0.1:{port}{PATH}",
        content=body,
        headers={k.replace("_", "-"): v for k, v in headers.items()},
    )


def events(text: str) -> list[str]:
    """The stream's events, each event's send time taken out (it differs between runs)."""
    out = []
    for raw in text.split("\n\n")[:-1]:
        match = EVENT.fullmatch(raw.encode())
        out.append(f"seq {match.group(1).decode()} pad {match.group(3).decode()}" if match else raw)
    return out


def test_h2_mock_streams_the_events_the_http1_mock_streams(mocks: tuple[int, int]) -> None:
    http1, http2 = mocks
    shape = {"x_bench_chunks": "4", "x_bench_interval_ms": "1", "x_bench_pad": "7"}
    body = b'{"model": "bench", "stream": true}'
    with httpx.Client() as client:
        expected = post(client, http1, body, **shape)
    with httpx.Client(http1=False, http2=True) as client:
        got = post(client, http2, body, **shape)
    assert got.http_version == "HTTP/2"
    assert got.headers["content-type"] == "text/event-stream"
    assert events(got.text) == events(expected.text)
    assert events(got.text) == [*(f"seq {n} pad xxxxxxx" for n in range(4)), "data: [DONE]"]


def test_h2_mock_answers_without_stream_with_the_same_completion(mocks: tuple[int, int]) -> None:
    with httpx.Client(http1=False, http2=True) as client:
        got = post(client, mocks[1], b'{"model": "bench"}')
    assert got.status_code == 200
    assert got.content == COMPLETION
    assert got.headers["content-length"] == str(len(COMPLETION))


def small_window_stream(port: int, headers: list[tuple[str, str]]) -> bytes:
    """A stream's body read over a connection whose windows hold only `SMALL_WINDOW`
    bytes each, opened again only as the body is read (an h2 client on a socket)."""
    h2 = H2Connection(H2Configuration(client_side=True, header_encoding="utf-8"))
    h2.local_settings = Settings(
        client=True, initial_values={SettingCodes.INITIAL_WINDOW_SIZE: SMALL_WINDOW}
    )
    body = b'{"stream": true}'
    received = bytearray()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        h2.initiate_connection()
        stream_id = h2.get_next_available_stream_id()
        h2.send_headers(
            stream_id,
            [
                (":method", "POST"),
                (":scheme", "http"),
                (":authority", "bench"),
                (":path", PATH),
                *headers,
            ],
        )
        h2.send_data(stream_id, body, end_stream=True)
        sock.sendall(h2.data_to_send())
        while True:
            data = sock.recv(65536)
            assert data, "connection closed before the stream ended"
            for event in h2.receive_data(data):
                if isinstance(event, DataReceived):
                    received += event.data
                    h2.acknowledge_received_data(event.flow_controlled_length, stream_id)
                elif isinstance(event, StreamEnded):
                    return bytes(received)
                elif isinstance(event, StreamReset):
                    raise AssertionError(f"stream reset: {event.error_code!r}")
            sock.sendall(h2.data_to_send())


#: The receive windows of `small_window_stream`: a few events' worth.
SMALL_WINDOW = 1000


def test_h2_mock_waits_for_the_clients_window_in_a_firehose(mocks: tuple[int, int]) -> None:
    # 500 events of about 110 bytes, sent as fast as the windows allow, through windows of
    # 1,000 bytes: the mock must wait for each WINDOW_UPDATE, not overrun or drop events.
    got = small_window_stream(
        mocks[1], [("x-bench-chunks", "500"), ("x-bench-interval-ms", "0")]
    ).decode()
    seen = events(got)
    assert len(got) > 50 * SMALL_WINDOW
    assert seen[-1] == "data: [DONE]"
    assert seen[:-1] == [f"seq {n} pad {'x' * 64}" for n in range(500)]


def test_h2_mock_goes_on_after_a_request_reset_in_the_read_that_ended_it(
    mocks: tuple[int, int],
) -> None:
    # A proxy whose client went away resets the stream it has just sent: h2 has closed
    # the stream by the time the mock sees the request end, and the connection must live.
    h2 = H2Connection(H2Configuration(client_side=True, header_encoding="utf-8"))
    request = [(":method", "POST"), (":scheme", "http"), (":authority", "b"), (":path", PATH)]
    with socket.create_connection(("127.0.0.1", mocks[1]), timeout=10) as sock:
        h2.initiate_connection()
        h2.send_headers(1, request)
        h2.send_data(1, b"{}", end_stream=True)
        h2.reset_stream(1)
        h2.send_headers(3, request)
        h2.send_data(3, b"{}", end_stream=True)
        sock.sendall(h2.data_to_send())
        body = bytearray()
        while True:
            data = sock.recv(65536)
            assert data, "the mock closed the connection"
            ended = False
            for event in h2.receive_data(data):
                if isinstance(event, DataReceived) and event.stream_id == 3:
                    body += event.data
                ended = ended or (isinstance(event, StreamEnded) and event.stream_id == 3)
            sock.sendall(h2.data_to_send())
            if ended:
                break
    assert bytes(body) == COMPLETION


def test_h2_mock_sends_chat_chunks_when_asked(mocks: tuple[int, int]) -> None:
    with httpx.Client() as client:
        expected = post(
            client, mocks[0], b'{"stream": true}', x_bench_chunks="3", x_bench_format="chat"
        )
    with httpx.Client(http1=False, http2=True) as client:
        got = post(client, mocks[1], b'{"stream": true}', x_bench_chunks="3", x_bench_format="chat")
    assert got.content == expected.content
    assert got.text.count('"content":"') == 4  # the role chunk's and three of text


def test_h2_upstream_config_is_the_bench_config_on_http2() -> None:
    env = {"FILTERPROXY_UPSTREAM": "http://127.0.0.1:9999"}
    h2 = load_config(ROOT / "conf" / "bench-h2-upstream.yaml", environ=env)
    plain = load_config(ROOT / "conf" / "bench.yaml", environ=env)
    assert h2.clusters["upstream"].protocol == "http2"
    assert h2.clusters["upstream"].endpoints[0].url == "http://127.0.0.1:9999"
    assert [f.type_name for f in h2.filters] == [f.type_name for f in plain.filters]
    assert h2.clusters["upstream"].headers == plain.clusters["upstream"].headers
    assert h2.access_log == plain.access_log


def rows(results: dict[str, Any]) -> dict[str, list[str]]:
    """The HTTP/2-upstream rows for *results*, each row's cells as the table shows them."""
    out: dict[str, list[str]] = {}

    def row(label: str, pick: Any, digits: int = 1) -> None:
        out[label] = [fmt(pick(r), digits) for r in results.values()]

    h2_upstream_rows(row)
    return out


def scenario(share: float, busy: float = 0.5, **figures: float) -> dict[str, float]:
    base = {
        "streams_per_s": 190.0,
        "chunk_p99_ms": 1.5,
        "errors": 0,
        "cpu_us_per_chunk": 10.0,
        "requests_per_s": 3000.0,
        "cpu_us_per_request": 120.0,
    }
    return {**base, **figures, "upstream_core_share": share, "load_core_busy": busy}


def test_h2_upstream_rows_leave_peers_without_the_set_up_blank() -> None:
    measured = {
        "h2_upstream": {
            "stream200": scenario(0.4, cpu_us_per_chunk=12.5),
            "stream200_plain": scenario(0.3, cpu_us_per_chunk=9.25),
            "nonstream": scenario(0.45, 0.95, cpu_us_per_request=140.0),
        }
    }
    table = rows({"nginx": {}, "filterproxy": measured})
    chunk = next(cells for label, cells in table.items() if "per chunk" in label)
    request = next(cells for label, cells in table.items() if "per request" in label)
    core = next(cells for label, cells in table.items() if "mock's CPU" in label)
    assert chunk == ["—", "9.2 / 12.5"]
    assert request == ["—", "140.0"]
    assert core == ["—", "30 % (50 %) / 45 % (95 %)"]


def test_a_full_load_core_is_named_under_the_table() -> None:
    busy = {"h2_upstream": {"nonstream": scenario(0.6, SATURATED + 0.01)}}
    calm = {"h2_upstream": {"nonstream": scenario(0.6, SATURATED - 0.2)}}
    assert "envoy (nonstream)" in _saturation_note({"envoy": busy, "filterproxy": calm})
    assert "filterproxy" not in _saturation_note({"envoy": busy, "filterproxy": calm})
    assert _saturation_note({"filterproxy": calm}) == ""


def test_before_tree_without_the_gateway_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PeerUnavailable, match="no filterproxy/ package"):
        check_source_tree(tmp_path)


def test_before_tree_whose_gateway_does_not_import_is_refused(tmp_path: Path) -> None:
    (tmp_path / "filterproxy").mkdir()
    (tmp_path / "filterproxy" / "__init__.py").write_text("")
    with pytest.raises(PeerUnavailable, match="does not import"):
        check_source_tree(tmp_path)


def test_before_tree_names_where_the_gateway_comes_from() -> None:
    said = check_source_tree(ROOT)
    assert f"from {ROOT / 'filterproxy' / '__init__.py'}" in said
    assert "modules compiled" in said
