"""Running the gateway for months: metrics, access log, request ids, tracing, the admin
listener, hot reload, systemd and check-config — against the real processes."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any, ClassVar

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from filterproxy.server.workers import CANNOT_START

from .conftest import (
    TWISTD,
    Gateway,
    Process,
    Upstream,
    gateway_config,
    start_gateway,
    twistd_command,
    wait_until,
)

MESSAGES = [{"role": "user", "content": "hello"}]
USAGE_CHAIN = """
          - type: usage
            include_usage: true
"""


def client(gateway: Gateway) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{gateway.url}/v1", api_key="sk-client-key", max_retries=0, timeout=15
    )


def samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, []).append((sample.labels, sample.value))
    return found


def value(found: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str) -> float:
    return sum(v for lab, v in found.get(name, []) if labels.items() <= lab.items())


@pytest.fixture(scope="module")
def usage_gateway(
    upstream: Upstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    text = gateway_config(upstream.url) + USAGE_CHAIN
    gw = start_gateway(text, tmp_path_factory.mktemp("usage"))
    try:
        yield gw
    finally:
        gw.process.stop()


def test_stream_usage_is_counted_and_the_injected_usage_chunk_never_reaches_the_client(
    usage_gateway: Gateway, upstream: Upstream
) -> None:
    request_id = f"req-{uuid.uuid4().hex}"
    caller = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    with httpx.stream(
        "POST",
        f"{usage_gateway.url}/v1/chat/completions",
        json={"model": "test-model", "messages": MESSAGES, "stream": True},
        headers={"x-request-id": request_id, "traceparent": caller},
        timeout=15,
    ) as response:
        raw = b"".join(response.iter_bytes())
        assert response.headers["x-request-id"] == request_id
    # The upstream was asked for usage and saw the same request id and trace.
    stats = upstream.stats()
    sent_body = json.loads(stats["last_body"])  # type: ignore[arg-type]
    assert sent_body["stream_options"] == {"include_usage": True}
    headers: dict[str, list[str]] = stats["last_headers"]  # type: ignore[assignment]
    assert headers["x-request-id"] == [request_id]
    upstream_trace = headers["traceparent"][0].split("-")
    assert upstream_trace[1] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert upstream_trace[2] != "00f067aa0ba902b7"
    # The client got every event but the usage-only one, byte for byte otherwise.
    events = [e for e in raw.split(b"\n\n") if e]
    assert events[-1] == b"data: [DONE]"
    assert len(events) == 5 + 2
    assert not any(b'"choices": []' in e for e in events)
    record = usage_gateway.access_record(request_id)
    assert record["prompt_tokens"] == 7 and record["completion_tokens"] == 5
    assert record["ttft_ms"] is not None and record["ttft_ms"] <= record["duration_ms"]
    assert record["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert record["outcome"] == "complete"
    assert "sk-" not in json.dumps(record)


def test_a_client_that_asked_for_usage_gets_it(usage_gateway: Gateway) -> None:
    stream = client(usage_gateway).chat.completions.create(
        model="test-model",
        messages=MESSAGES,  # type: ignore[arg-type]
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"test": {"chunks": 3}},
    )
    chunks = list(stream)
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 3


def test_metrics_describe_the_traffic(usage_gateway: Gateway) -> None:
    before = samples(usage_gateway.metrics())
    for _ in range(3):
        stream = client(usage_gateway).chat.completions.create(
            model="fast",  # an alias of test-model
            messages=MESSAGES,  # type: ignore[arg-type]
            stream=True,
            extra_body={"test": {"chunks": 4, "interval": 0.01}},
        )
        assert len([c for c in stream if c.choices]) == 5
    plain = client(usage_gateway).chat.completions.create(model="test-model", messages=MESSAGES)  # type: ignore[arg-type]
    assert plain.usage is not None
    missing = httpx.post(f"{usage_gateway.url}/v1/chat/completions", json={"model": "nope"})
    assert missing.status_code == 404
    after = samples(usage_gateway.metrics())

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert (
        grew("filterproxy_requests_total", model="test-model", status_class="2xx", cluster="test")
        == 4
    )
    assert grew("filterproxy_requests_total", route="none", model="none", status_class="4xx") == 1
    assert grew("gen_ai_server_time_to_first_token_seconds_count", model="test-model") == 4
    assert grew("gen_ai_client_token_usage_sum", gen_ai_token_type="output") == 3 * 4 + 2
    assert grew("gen_ai_client_token_usage_sum", gen_ai_token_type="input") == 3 * 7 + 3
    # 5 events arrive 10 ms apart: at least 4 gaps per stream, each under a second.
    assert grew("filterproxy_stream_chunk_gap_seconds_count") >= 12
    assert grew("filterproxy_stream_chunk_gap_seconds_bucket", le="1.0") == grew(
        "filterproxy_stream_chunk_gap_seconds_count"
    )
    assert grew("gen_ai_server_time_per_output_token_seconds_count") == 3
    assert grew("filterproxy_upstream_attempts_total", cluster="test") == 4
    assert grew("filterproxy_gateway_overhead_seconds_count") == 4
    assert value(after, "filterproxy_requests_in_flight") == 0
    assert value(after, "filterproxy_streams_open") == 0
    assert value(after, "process_resident_memory_bytes") > 0


def test_admin_endpoints_and_the_model_list(usage_gateway: Gateway) -> None:
    admin = usage_gateway.admin_url
    assert httpx.get(f"{admin}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{admin}/ready").status_code == 200
    config = httpx.get(f"{admin}/config")
    assert config.status_code == 200
    assert "sk-upstream-secret" not in config.text
    assert config.json()["clusters"]["test"]["headers"]["request"]["set"] == {
        "authorization": "<redacted>"
    }
    wrong_method = httpx.post(f"{admin}/healthz")
    assert wrong_method.status_code == 405
    assert wrong_method.headers["allow"] == "GET, HEAD"
    assert httpx.get(f"{admin}/reload").headers["allow"] == "POST"
    assert httpx.put(f"{admin}/config").status_code == 405
    missing = httpx.get(f"{admin}/nothing?x=1")
    assert missing.status_code == 404
    assert "/metrics" in missing.json()["endpoints"]
    assert httpx.get(f"{admin}/").json() == {
        "endpoints": [
            "/metrics",
            "/healthz",
            "/ready",
            "/serving",
            "/config",
            "POST /reload",
            "/memory",
            "POST /memory/cycles",
        ]
    }
    head = httpx.head(f"{admin}/healthz?probe=1")
    assert head.status_code == 200
    assert head.content == b""
    assert int(head.headers["content-length"]) == len(httpx.get(f"{admin}/healthz").content)
    assert httpx.get(f"{admin}/metrics").headers["content-type"].startswith("text/plain")
    # One connection for several requests, as a scraper or curl keeps it.
    with httpx.Client() as keep_alive:
        assert [keep_alive.get(f"{admin}/healthz").status_code for _ in range(3)] == [200] * 3
    both = subprocess.run(
        ["curl", "-sv", f"{admin}/healthz", f"{admin}/ready"],
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert both.stdout == '{"status": "ok"}\n{"status": "ready"}\n'
    assert "Re-using existing connection" in both.stderr or "Reusing" in both.stderr
    models = client(usage_gateway).models.list()
    assert sorted(m.id for m in models) == ["down-model", "fast", "test-model"]


def test_ready_is_503_while_a_cluster_has_every_endpoint_ejected(
    upstream: Upstream, tmp_path: Path
) -> None:
    text = gateway_config(upstream.url).replace(
        "down:\n            url: http://127.0.0.1:9\n",
        "down:\n            url: http://127.0.0.1:9\n"
        "            outlier_detection: {consecutive_failures: 1}\n",
    )
    gateway = start_gateway(text, tmp_path)
    try:
        assert httpx.get(f"{gateway.admin_url}/ready").status_code == 200
        failed = httpx.post(f"{gateway.url}/v1/chat/completions", json={"model": "down-model"})
        assert failed.status_code == 502
        ready = httpx.get(f"{gateway.admin_url}/ready")
        assert ready.status_code == 503
        assert ready.json()["clusters_without_endpoints"] == ["down"]
        metrics = samples(gateway.metrics())
        assert value(metrics, "filterproxy_upstream_ejections_total", cluster="down") == 1
    finally:
        gateway.process.stop()


def test_reload_applies_to_new_requests_while_a_stream_finishes_on_the_old_config(
    upstream: Upstream, tmp_path: Path
) -> None:
    gateway = start_gateway(gateway_config(upstream.url), tmp_path)
    config_file = tmp_path / "gateway.yaml"
    try:
        hold = uuid.uuid4().hex
        held = httpx.Client(timeout=20)
        with held.stream(
            "POST",
            f"{gateway.url}/v1/chat/completions",
            json={"model": "test-model", "stream": True, "test": {"chunks": 3, "hold": hold}},
        ) as stream:
            pieces = stream.iter_bytes()
            first = next(pieces)
            assert b"tok0" in first
            # A new alias in the config; SIGHUP re-reads it.
            config_file.write_text(
                config_file.read_text().replace(
                    "fast: test-model", "fast: test-model\n  newer: test-model"
                )
            )
            gateway.process.popen.send_signal(signal.SIGHUP)
            gateway.process.wait_for(r"config reloaded from .*1 requests in flight")
            answered = httpx.post(
                f"{gateway.url}/v1/chat/completions", json={"model": "newer"}, timeout=10
            )
            assert answered.status_code == 200, answered.text
            upstream.release(hold)
            rest = b"".join(pieces)
        assert (first + rest).endswith(b"data: [DONE]\n\n")
        # The old pool closed its connection when that stream ended: one idle connection
        # (the new config's) is left to the upstream.
        wait_until(lambda: gateway.open_connections(remote_port=upstream.port) == 1, timeout=10)

        # An invalid config is rejected with its key path; the running one stays.
        good = config_file.read_text()
        config_file.write_text(good.replace("cluster: test", "cluster: missing", 1))
        rejected = httpx.post(f"{gateway.admin_url}/reload")
        assert rejected.status_code == 400
        assert "routes[0].cluster" in rejected.json()["error"]
        gateway.process.wait_for(r"config reload rejected")
        still = httpx.post(f"{gateway.url}/v1/chat/completions", json={"model": "newer"})
        assert still.status_code == 200
        config_file.write_text(good.replace("newer: test-model", ""))
        assert httpx.post(f"{gateway.admin_url}/reload").status_code == 200
        gone = httpx.post(f"{gateway.url}/v1/chat/completions", json={"model": "newer"})
        assert gone.status_code == 404
    finally:
        gateway.process.stop()


def test_socket_activation_and_readiness_notifications(upstream: Upstream, tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(textwrap.dedent(gateway_config(upstream.url)) + "admin: false\n")
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    notify_path = str(tmp_path / "notify.sock")
    notifications = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notifications.bind(notify_path)
    notifications.settimeout(20)
    fd = listener.fileno()
    log = tmp_path / "gateway.log"

    def inherit_socket_as_fd_3() -> None:
        os.dup2(fd, 3)

    process = subprocess.Popen(
        [
            "/bin/sh",
            "-c",
            'export LISTEN_PID=$$; exec "$@"',
            "sh",
            *twistd_command(config, "--listen", "systemd:domain=INET:index=0"),
        ],
        env={
            **os.environ,
            "LISTEN_FDS": "1",
            "LISTEN_FDNAMES": "filterproxy.socket",  # as systemd 227+ sets it
            "NOTIFY_SOCKET": notify_path,
        },
        preexec_fn=inherit_socket_as_fd_3,
        pass_fds=(3,),  # keep what the preexec function put there
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    try:
        listener.close()  # only the gateway holds it now
        assert notifications.recv(1000).startswith(b"READY=1")
        answered = httpx.post(
            f"http://127.0.0.1:{port}/v1/chat/completions", json={"model": "test-model"}
        )
        assert answered.status_code == 200
        process.send_signal(signal.SIGHUP)
        assert notifications.recv(1000).startswith(b"RELOADING=1\nMONOTONIC_USEC=")
        assert notifications.recv(1000).startswith(b"READY=1")
        process.terminate()
        assert notifications.recv(1000) == b"STOPPING=1"
        process.wait(15)
    finally:
        notifications.close()
        if process.poll() is None:
            process.kill()
            process.wait()


def test_check_config_reports_problems_with_their_key_path(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text('clusters: {a: {url: "http://127.0.0.1:1"}}\nlisteners: ["tcp:8080"]\n')
    bad = tmp_path / "bad.yaml"
    bad.write_text('clusters: {a: {url: "http://127.0.0.1:1", timeouts: {connect: soon}}}\n')
    command = Path(sys.executable).parent / "filterproxy"
    ok = subprocess.run([str(command), "check-config", str(good)], capture_output=True, text=True)
    assert ok.returncode == 0 and "OK" in ok.stdout
    failed = subprocess.run(
        [str(command), "check-config", str(good), str(bad)], capture_output=True, text=True
    )
    assert failed.returncode == 1
    assert "clusters.a.timeouts.connect" in failed.stderr


class _Collector(BaseHTTPRequestHandler):
    received: ClassVar[list[bytes]] = []

    def do_POST(self) -> None:
        length = int(self.headers["content-length"])
        self.received.append(self.rfile.read(length))
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_spans_are_exported_with_the_callers_trace_and_genai_attributes(
    upstream: Upstream, tmp_path: Path
) -> None:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    collector = HTTPServer(("127.0.0.1", 0), _Collector)
    threading.Thread(target=collector.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{collector.server_address[1]}/v1/traces"
    text = (
        gateway_config(upstream.url)
        + USAGE_CHAIN
        + f"\n        tracing: {{otlp_endpoint: {endpoint}}}\n"
    )
    gateway = start_gateway(text, tmp_path, env={"OTEL_BSP_SCHEDULE_DELAY": "100"})
    try:
        caller = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        response = httpx.post(
            f"{gateway.url}/v1/chat/completions",
            json={"model": "test-model", "messages": MESSAGES, "stream": True},
            headers={"traceparent": caller},
            timeout=15,
        )
        assert response.status_code == 200
        sent_trace = upstream.stats()["last_headers"]["traceparent"][0]  # type: ignore[index]
        wait_until(lambda: bool(_Collector.received), timeout=15)
        spans = []
        for body in _Collector.received:
            export = ExportTraceServiceRequest.FromString(body)
            for resource in export.resource_spans:
                for scope in resource.scope_spans:
                    spans.extend(scope.spans)
        (span,) = spans
        assert span.trace_id.hex() == "0af7651916cd43dd8448eb211c80319c"
        assert span.parent_span_id.hex() == "b7ad6b7169203331"
        assert sent_trace == f"00-{span.trace_id.hex()}-{span.span_id.hex()}-01"
        assert span.name == "chat test-model"
        attributes = {a.key: a.value for a in span.attributes}
        assert attributes["gen_ai.request.model"].string_value == "test-model"
        assert attributes["gen_ai.usage.output_tokens"].int_value == 5
        assert attributes["http.response.status_code"].int_value == 200
        assert attributes["gen_ai.server.time_to_first_token"].double_value > 0
    finally:
        gateway.process.stop()
        collector.shutdown()


def test_a_request_id_that_could_break_the_log_is_replaced(gateway: Gateway) -> None:
    response = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        json={"model": "test-model"},
        headers={"x-request-id": 'evil"\\id'},
    )
    assert response.status_code == 200
    assert re.fullmatch(r"[0-9a-f]{32}", response.headers["x-request-id"])


def test_json_logs_for_journald(upstream: Upstream, tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(textwrap.dedent(gateway_config(upstream.url)))
    process = Process(
        [
            str(TWISTD),
            "-n",
            "--pidfile=",
            "--logger",
            "filterproxy.logs.json_stdout",
            "filterproxy",
            "-c",
            str(config),
            "--listen",
            "tcp:0:interface=127.0.0.1",
            "--admin",
            "tcp:0:interface=127.0.0.1",
        ]
    )
    try:
        port = int(process.wait_for(r"filterproxy listening on .*port=(\d+)").group(1))
        response = httpx.post(
            f"http://127.0.0.1:{port}/v1/chat/completions", json={"model": "test-model"}
        )
        request_id = response.headers["x-request-id"]
        process.wait_for(request_id)
        records = [json.loads(line) for line in process.lines if line.strip()]
        access = [r for r in records if r["namespace"] == "filterproxy.access"]
        assert access[-1]["access"]["request_id"] == request_id
        assert access[-1]["access"]["status"] == 200
        assert json.loads(access[-1]["message"]) == access[-1]["access"]
        assert {r["level"] for r in records} <= {"debug", "info", "warn", "error", "critical"}
    finally:
        process.stop()


def test_an_admin_port_in_use_stops_start_up_and_says_which(
    upstream: Upstream, tmp_path: Path
) -> None:
    taken = socket.create_server(("127.0.0.1", 0))
    port = taken.getsockname()[1]
    config = tmp_path / "gateway.yaml"
    config.write_text(textwrap.dedent(gateway_config(upstream.url)))
    try:
        result = subprocess.run(
            twistd_command(
                config,
                "--listen",
                "tcp:0:interface=127.0.0.1",
                "--admin",
                f"tcp:{port}:interface=127.0.0.1",
            ),
            capture_output=True,
            text=True,
            timeout=30,
        )
    finally:
        taken.close()
    assert result.returncode == CANNOT_START
    assert f"cannot listen on tcp:{port}:interface=127.0.0.1" in result.stdout
    assert "Address already in use" in result.stdout


def test_access_log_to_a_file_in_batches_reopened_on_reload(
    upstream: Upstream, tmp_path: Path
) -> None:
    """``access_log: PATH``: one JSON line per request in the file (not in the gateway's
    log), written in batches at least once a second; a reload after logrotate moved the
    file starts a new one; stopping writes what is left."""
    path = tmp_path / "access.log"
    gateway = start_gateway(gateway_config(upstream.url, extra=f"access_log: {path}"), tmp_path)
    try:
        ids = [uuid.uuid4().hex for _ in range(5)]
        for request_id in ids:
            answered = httpx.post(
                f"{gateway.url}/v1/chat/completions",
                json={"model": "test-model"},
                headers={"x-request-id": request_id},
                timeout=10,
            )
            assert answered.status_code == 200

        def records(file: Path) -> list[dict[str, Any]]:
            text = file.read_text() if file.exists() else ""
            return [json.loads(line) for line in text.splitlines()]

        wait_until(lambda: len(records(path)) == 5, timeout=5)
        assert [r["request_id"] for r in records(path)] == ids
        assert all(r["status"] == 200 and r["outcome"] == "complete" for r in records(path))
        assert "filterproxy.access" not in gateway.process.output()

        # logrotate: move the file away, then reload.
        rotated = tmp_path / "access.log.1"
        path.rename(rotated)
        gateway.process.popen.send_signal(signal.SIGHUP)
        gateway.process.wait_for(r"config reloaded from")
        late = uuid.uuid4().hex
        httpx.post(
            f"{gateway.url}/v1/chat/completions",
            json={"model": "test-model"},
            headers={"x-request-id": late},
            timeout=10,
        )
    finally:
        gateway.process.stop()
    assert [r["request_id"] for r in records(rotated)] == ids
    assert [r["request_id"] for r in records(path)] == [late]  # written when it stopped
