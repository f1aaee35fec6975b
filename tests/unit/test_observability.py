"""Usage scanning, trace context, metrics and the admin's redaction: plain functions."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from filterproxy.extensions.builtin import parse_config
from filterproxy.extensions.route.filter import RouteTable
from filterproxy.extensions.usage.filter import (
    UsageScanner,
    is_usage_only_event,
    marker_start_at_end,
    token_counts,
    wants_usage_injection,
)
from filterproxy.filters.api import StreamInfo
from filterproxy.http.sse import SSEDecoder
from filterproxy.http.tracing import child_context, parse_traceparent, request_id_from
from filterproxy.observability.metrics import MAX_MODEL_LABELS, Metrics
from filterproxy.server.admin import REDACTED, redacted_config
from filterproxy.server.sdnotify import notify, reloading_message
from filterproxy.server.service import _shift_port

OPENAI_LAST = (
    b'data: {"id":"c","choices":[],"usage":{"prompt_tokens":12,"completion_tokens":34,'
    b'"total_tokens":46}}\n\n'
)


def feed_all(pieces: list[bytes]) -> UsageScanner:
    scanner = UsageScanner()
    for piece in pieces:
        scanner.feed(piece)
    return scanner


@pytest.mark.parametrize("cut", range(1, len(OPENAI_LAST)))
def test_usage_is_found_wherever_the_stream_is_cut(cut: int) -> None:
    before = b'data: {"choices":[{"delta":{"content":"hi"}}],"usage":null}\n\n'
    stream = before + OPENAI_LAST + b"data: [DONE]\n\n"
    at = len(before) + cut
    scanner = feed_all([stream[:at], stream[at:]])
    assert (scanner.prompt_tokens, scanner.completion_tokens) == (12, 34)


def test_usage_is_found_when_its_marker_is_cut_twice() -> None:
    stream = b'data: {"choices":[]}\n\n' + OPENAI_LAST + b"data: [DONE]\n\n"
    start = stream.index(b'"usage"')
    for a in range(start - 2, start + 8):
        for b in range(a + 1, start + 10):
            scanner = feed_all([stream[:a], stream[a:b], stream[b:]])
            assert (scanner.prompt_tokens, scanner.completion_tokens) == (12, 34), (a, b)


def test_only_a_possible_start_of_the_marker_is_kept_between_pieces() -> None:
    assert marker_start_at_end(b"data: {}\n\n") == b""
    assert marker_start_at_end(b'{"content":"x"') == b'"'
    assert marker_start_at_end(b'{"us') == b'"us'
    assert marker_start_at_end(b'{"usage') == b'"usage'
    assert marker_start_at_end(b'{"usage"') == b'"'  # a whole marker is found, not kept
    assert marker_start_at_end(b"usage") == b""
    assert marker_start_at_end(b"") == b""


def test_usage_in_one_byte_pieces_and_in_anthropic_events() -> None:
    stream = (
        b'event: message_start\ndata: {"type":"message_start","message":{"usage":'
        b'{"input_tokens":25,"output_tokens":1}}}\n\n'
        b'event: content_block_delta\ndata: {"delta":{"text":"say \\"usage\\": {1}"}}\n\n'
        b'event: message_delta\ndata: {"type":"message_delta","usage":{"output_tokens":15}}\n\n'
    )
    scanner = feed_all([stream[i : i + 1] for i in range(len(stream))])
    assert (scanner.prompt_tokens, scanner.completion_tokens) == (25, 15)


def test_usage_in_a_plain_json_response_and_none_when_absent() -> None:
    body = json.dumps(
        {
            "choices": [{"message": {"content": "usage"}}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 2},
        }
    ).encode()
    assert (feed_all([body]).prompt_tokens, feed_all([body]).completion_tokens) == (3, 2)
    nothing = feed_all([b'data: {"usage": null}\n\n', b"data: [DONE]\n\n"])
    assert (nothing.prompt_tokens, nothing.completion_tokens) == (None, None)


def test_token_counts_accepts_only_counts() -> None:
    assert token_counts({"prompt_tokens": 1, "completion_tokens": 2}) == (1, 2)
    assert token_counts({"input_tokens": 5}) == (5, None)
    # Anthropic's input_tokens leave the cache out; the prompt count includes it.
    assert token_counts(
        {"input_tokens": 5, "cache_read_input_tokens": 90, "cache_creation_input_tokens": 4}
    ) == (99, None)
    assert token_counts({"prompt_tokens": "7", "completion_tokens": True}) == (None, None)


def test_usage_only_events_are_recognised() -> None:
    chunk = b'data: {"choices":[{"delta":{}}],"usage":null}\n\n'
    events = SSEDecoder().feed(chunk + OPENAI_LAST + b"data: [DONE]\n\n")
    assert [is_usage_only_event(e) for e in events] == [False, True, False]


def test_usage_injection_only_for_streaming_completions_without_usage() -> None:
    path = "/v1/chat/completions"
    assert wants_usage_injection(path, {"stream": True})
    assert wants_usage_injection(path, {"stream": True, "stream_options": {}})
    assert wants_usage_injection(path, {"stream": True, "stream_options": {"include_usage": False}})
    assert not wants_usage_injection(
        path, {"stream": True, "stream_options": {"include_usage": True}}
    )
    assert not wants_usage_injection(path, {"stream": False})
    assert not wants_usage_injection("/v1/embeddings", {"stream": True})
    assert not wants_usage_injection(path, {"stream": True, "stream_options": "bad"})


def test_traceparent_parsing_follows_the_w3c_rules() -> None:
    good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    assert parse_traceparent(good) == ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", "01")
    for bad in (
        None,
        "",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        good + "-extra",
    ):
        assert parse_traceparent(bad) is None, bad
    assert (
        parse_traceparent("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x") is not None
    )


def test_a_hop_continues_the_callers_trace_or_starts_one() -> None:
    caller = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"
    hop = child_context(caller)
    assert hop.trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert hop.parent_span_id == "00f067aa0ba902b7"
    assert hop.span_id != hop.parent_span_id and len(hop.span_id) == 16
    assert hop.traceparent() == f"00-{hop.trace_id}-{hop.span_id}-00"
    new = child_context(None)
    assert new.parent_span_id is None and len(new.trace_id) == 32
    assert parse_traceparent(new.traceparent()) is not None
    assert child_context(None).trace_id != new.trace_id


def test_request_ids() -> None:
    assert request_id_from("abc-123") == "abc-123"
    generated = {request_id_from(None), request_id_from("has space"), request_id_from("")}
    assert len(generated) == 3 and all(len(i) == 32 for i in generated)


def scrape(metrics: Metrics) -> dict[str, list[tuple[dict[str, str], float]]]:
    text = generate_latest(metrics.registry()).decode()
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def test_metrics_are_exposed_with_bounded_labels() -> None:
    metrics = Metrics()
    info = StreamInfo(model="gpt-4o", cluster="openai", status=200, outcome="complete", attempts=2)
    info.time_to_first_token = 0.03
    info.prompt_tokens, info.completion_tokens = 10, 21
    metrics.record_request(info, 1.03, 0.0004, streamed=True)
    metrics.chunk_gap.get(("r",)).observe(0.02)
    samples = scrape(metrics)
    ((labels, value),) = samples["filterproxy_requests_total"]
    assert labels == {
        "route": "none",
        "cluster": "openai",
        "model": "gpt-4o",
        "status_class": "2xx",
    }
    assert value == 1
    assert samples["filterproxy_upstream_attempts_total"] == [({"cluster": "openai"}, 2.0)]
    ttft = dict(
        (labels["le"], v)
        for labels, v in samples["gen_ai_server_time_to_first_token_seconds_bucket"]
    )
    assert ttft["0.02"] == 0 and ttft["0.04"] == 1 and ttft["+Inf"] == 1
    per_token = samples["gen_ai_server_time_per_output_token_seconds_sum"][0][1]
    assert per_token == pytest.approx(1.0 / 20)
    tokens = {
        labels["gen_ai_token_type"]: v for labels, v in samples["gen_ai_client_token_usage_sum"]
    }
    assert tokens == {"input": 10, "output": 21}
    assert samples["filterproxy_gateway_overhead_seconds_count"][0][1] == 1
    assert samples["filterproxy_stream_chunk_gap_seconds_count"] == [({"route": "r"}, 1.0)]
    assert samples["filterproxy_requests_in_flight"] == [({}, 0.0)]
    assert "process_resident_memory_bytes" in samples
    for i in range(MAX_MODEL_LABELS + 10):
        metrics.model_label(f"m{i}")
    assert metrics.model_label("yet-another") == "other"
    assert metrics.model_label("m0") == "m0"


def test_the_config_shown_by_the_admin_has_no_secrets() -> None:
    config = parse_config(
        """
        clusters:
          openai:
            url: https://user:pw@api.example.com/v1
            request_headers:
              set: {authorization: "Bearer ${KEY}", x-custom: plain, x-api-key: k1, x-team: sk-abc}
        routes: [{name: all, cluster: openai}]
        admin: {token: "${ADMIN}"}
        """,
        environ={"KEY": "sk-live-123", "ADMIN": "the-admin-token"},
    )
    text = json.dumps(redacted_config(config))
    assert redacted_config(config)["admin_token"] == REDACTED
    for secret in ("sk-live-123", "k1", "sk-abc", "pw", "the-admin-token"):
        assert secret not in text
    headers = redacted_config(config)["clusters"]["openai"]["headers"]["request"]["set"]
    assert headers == {
        "authorization": REDACTED,
        "x-custom": "plain",
        "x-api-key": REDACTED,
        "x-team": REDACTED,
    }
    assert "api.example.com" in text


def test_model_list_names_models_and_aliases_not_patterns() -> None:
    config = parse_config(
        """
        clusters: {a: {url: "http://127.0.0.1:1"}, b: {url: "http://127.0.0.1:2"}}
        routes:
          - {name: one, cluster: a, models: [gpt-4o, "gpt-4o-*"]}
          - {name: two, cluster: b, models: [llama]}
        aliases: {fast: llama}
        """,
        environ={},
    )
    listing = RouteTable(config.routes, config.aliases).model_list(5)
    assert listing["object"] == "list"
    assert [(m["id"], m["owned_by"]) for m in listing["data"]] == [
        ("fast", "b"),
        ("gpt-4o", "a"),
        ("llama", "b"),
    ]


def test_worker_admin_ports_are_shifted() -> None:
    assert _shift_port("tcp:9901:interface=127.0.0.1", 2) == "tcp:9903:interface=127.0.0.1"
    assert _shift_port("tcp:0:interface=127.0.0.1", 1) == "tcp:0:interface=127.0.0.1"
    assert _shift_port("unix:/run/a.sock", 1) == "unix:/run/a.sock"


def test_sd_notify_sends_a_datagram(tmp_path: Path) -> None:
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        assert notify("READY=1", {"NOTIFY_SOCKET": path})
        assert sock.recv(100) == b"READY=1"
    assert not notify("READY=1", {})
    assert not notify("READY=1", {"NOTIFY_SOCKET": str(tmp_path / "missing")})
    assert reloading_message(42) == "RELOADING=1\nMONOTONIC_USEC=42"


def test_json_log_lines_carry_the_access_record_and_tracebacks() -> None:
    from twisted.logger import LogLevel
    from twisted.python.failure import Failure

    from filterproxy.logs import event_as_json_line

    record = {"request_id": "r1", "status": 200}
    line = event_as_json_line(
        {
            "log_time": 0.0,
            "log_level": LogLevel.info,
            "log_namespace": "filterproxy.access",
            "log_format": "{access_line}",
            "access_line": json.dumps(record),
            "access": record,
        }
    )
    parsed = json.loads(line)
    assert line.endswith("\n") and "\n" not in line[:-1]
    assert parsed["access"] == record and parsed["level"] == "info"
    assert parsed["time"] == "1970-01-01T00:00:00.000+00:00"
    try:
        raise ValueError("boom")
    except ValueError:
        failure = Failure()
    broken = json.loads(
        event_as_json_line(
            {"log_level": LogLevel.error, "log_format": "it failed", "log_failure": failure}
        )
    )
    assert "ValueError: boom" in broken["traceback"] and broken["message"] == "it failed"


def test_genai_operation_names() -> None:
    pytest.importorskip("opentelemetry.sdk")
    from filterproxy.observability.otel import operation_name

    assert operation_name("/v1/chat/completions?x=1") == "chat"
    assert operation_name("/v1/messages") == "chat"
    assert operation_name("/v1/responses") == "chat"
    assert operation_name("/v1/completions") == "text_completion"
    assert operation_name("/v1/embeddings") == "embeddings"
    assert operation_name("/v1/files") == "http"


def test_sd_notify_to_an_abstract_socket() -> None:
    name = f"filterproxy-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        assert notify("STOPPING=1", {"NOTIFY_SOCKET": "@" + name})
        assert sock.recv(100) == b"STOPPING=1"
