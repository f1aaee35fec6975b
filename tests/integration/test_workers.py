"""--workers: several processes share the listener; a dead worker comes back; SIGTERM
lets in-flight streams finish."""

from __future__ import annotations

import json
import signal
import socket
import ssl
import subprocess
import textwrap
import uuid
from pathlib import Path

import httpx
import psutil

from filterproxy.server.workers import CANNOT_START

from .conftest import (
    TWISTD,
    Process,
    Upstream,
    make_certificate,
    post_chat,
    twistd_command,
    wait_until,
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_workers(listener: str, upstream: Upstream, tmp_path: Path) -> Process:
    """``twistd filterproxy --workers 2`` on *listener*, once both workers listen."""
    config = tmp_path / "gateway.yaml"
    config.write_text(
        textwrap.dedent(f"""
        listeners: ["{listener}"]
        admin: {{listen: "tcp:0:interface=127.0.0.1"}}
        clusters: {{test: {{url: "{upstream.url}"}}}}
    """)
    )
    supervisor = Process(twistd_command(config, "--workers", "2"))
    try:
        wait_until(lambda: supervisor.output().count("filterproxy listening on") == 2, timeout=20)
    except AssertionError:
        supervisor.stop()
        raise
    return supervisor


def request_id_prefixes(supervisor: Process) -> set[str]:
    """The per-process request-id prefixes in the access log: one per worker that served."""
    return {
        line.split('"request_id":"')[1][:16]
        for line in supervisor.lines
        if '"request_id":"' in line
    }


def test_workers_share_the_port_restart_and_drain_on_sigterm(
    upstream: Upstream, tmp_path: Path
) -> None:
    port = free_port()
    supervisor = start_workers(f"tcp:{port}:interface=127.0.0.1", upstream, tmp_path)
    try:
        workers = psutil.Process(supervisor.pid).children()
        assert len(workers) == 2

        # New connections are spread over both workers (each has its own id prefix).
        for _ in range(40):
            assert post_chat(f"http://127.0.0.1:{port}", "test-model").status_code == 200
        wait_until(lambda: supervisor.output().count('"outcome":"complete"') >= 40, timeout=10)
        assert len(request_id_prefixes(supervisor)) == 2

        # A worker that dies is replaced.
        workers[0].kill()
        wait_until(lambda: supervisor.output().count("filterproxy listening on") == 3, timeout=20)
        assert len(psutil.Process(supervisor.pid).children()) == 2

        # SIGTERM: accepting stops, the stream in progress finishes, everything exits.
        hold = uuid.uuid4().hex
        body = {
            "model": "test-model",
            "stream": True,
            "messages": [],
            "test": {"chunks": 3, "hold": hold},
        }
        with (
            httpx.Client(timeout=15) as client,
            client.stream("POST", f"http://127.0.0.1:{port}/v1/chat/completions", json=body) as r,
        ):
            chunks = r.iter_raw()
            assert b"tok0" in next(chunks)
            supervisor.popen.send_signal(signal.SIGTERM)
            wait_until(lambda: "waiting up to" in supervisor.output(), timeout=10)
            upstream.release(hold)
            rest = b"".join(chunks)
        assert rest.endswith(b"data: [DONE]\n\n")
        # twistd ends by re-raising the signal that stopped it, as it always does.
        assert supervisor.popen.wait(15) == -signal.SIGTERM
        assert "waiting up to 30s for 1 requests in progress" in supervisor.output()
    finally:
        supervisor.stop()
        for child in psutil.Process().children(recursive=True):
            if "--worker" in " ".join(child.cmdline()):
                child.kill()


def test_workers_share_a_tls_listener(upstream: Upstream, tmp_path: Path) -> None:
    cert, key = make_certificate(tmp_path, "gateway")
    port = free_port()
    supervisor = start_workers(
        f"ssl:{port}:interface=127.0.0.1:privateKey={key}:certKey={cert}", upstream, tmp_path
    )
    try:
        context = ssl.create_default_context(cafile=str(cert))
        for _ in range(20):
            with httpx.Client(verify=context, timeout=15) as client:
                r = client.post(
                    f"https://localhost:{port}/v1/chat/completions",
                    json={"model": "test-model", "messages": []},
                )
            assert r.status_code == 200
        wait_until(lambda: supervisor.output().count('"outcome":"complete"') >= 20, timeout=10)
        prefixes = {
            line.split('"request_id":"')[1][:16]
            for line in supervisor.lines
            if '"request_id":"' in line
        }
        assert len(prefixes) == 2
        # Workers speak HTTP/2 on it too (ALPN).
        with httpx.Client(http2=True, verify=context, timeout=15) as client:
            r = client.post(
                f"https://localhost:{port}/v1/chat/completions",
                json={"model": "test-model", "messages": []},
            )
        assert (r.status_code, r.http_version) == (200, "HTTP/2")
        # SIGHUP to the supervisor reloads every worker.
        supervisor.popen.send_signal(signal.SIGHUP)
        wait_until(lambda: supervisor.output().count("config reloaded from") == 2, timeout=15)
    finally:
        supervisor.stop()


def test_workers_refuse_listeners_they_cannot_share(tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text('clusters: {test: {url: "http://127.0.0.1:9"}}\n')
    result = subprocess.run(
        [
            str(TWISTD),
            "-n",
            "--pidfile=",
            "filterproxy",
            "-c",
            str(config),
            "--workers",
            "2",
            "--listen",
            f"unix:{tmp_path / 'gw.sock'}",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode != 0
    assert "--workers shares tcp:, tcp6: and ssl: listeners only" in result.stdout + result.stderr


def test_workers_on_a_port_already_taken_fail_start_up_once_with_the_reason(
    upstream: Upstream, tmp_path: Path
) -> None:
    # Held by another process's listener without SO_REUSEPORT: no worker can bind it.
    taken = socket.create_server(("127.0.0.1", 0))
    port = taken.getsockname()[1]
    config = tmp_path / "gateway.yaml"
    config.write_text(f'clusters: {{test: {{url: "{upstream.url}"}}}}\n')
    try:
        result = subprocess.run(
            twistd_command(config, "--workers", "2", "--listen", f"tcp:{port}:interface=127.0.0.1"),
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        taken.close()
    output = result.stdout + result.stderr
    assert result.returncode == CANNOT_START, output
    assert f"cannot listen on tcp:{port}:interface=127.0.0.1" in output
    assert "Address already in use" in output
    assert "start-up failed" in output
    # Each worker started once; none was restarted.
    assert output.count("started (pid") == 2
    assert "restarting in" not in output
    assert not any(
        "--worker" in " ".join(child.cmdline()) for child in psutil.Process().children(True)
    )


def test_workers_log_as_the_supervisor_was_told(upstream: Upstream, tmp_path: Path) -> None:
    """``twistd --logger filterproxy.logs.json_stdout filterproxy --workers 2`` (what the
    container image runs): every line on stdout is a JSON object, the workers' too."""
    config = tmp_path / "gateway.yaml"
    config.write_text(f'clusters: {{test: {{url: "{upstream.url}"}}}}\n')
    port = free_port()
    supervisor = Process(
        [
            str(TWISTD),
            "-n",
            "--pidfile=",
            "--logger",
            "filterproxy.logs.json_stdout",
            "filterproxy",
            "-c",
            str(config),
            "--workers",
            "2",
            "--listen",
            f"tcp:{port}:interface=127.0.0.1",
        ]
    )
    try:
        wait_until(lambda: supervisor.output().count("filterproxy listening on") == 2, timeout=20)
        assert post_chat(f"http://127.0.0.1:{port}", "test-model").status_code == 200
        wait_until(lambda: '"outcome":"complete"' in supervisor.output(), timeout=10)
    finally:
        supervisor.stop()
    lines = [line for line in supervisor.lines if line.strip()]
    assert len(lines) > 6
    for line in lines:
        assert isinstance(json.loads(line), dict), line
