"""What a rolling update and a mounted config need of one gateway process: on SIGTERM
``/ready`` answers 503 first while requests are still served for ``shutdown_delay``, then
the listener closes and streams in progress finish; ``config_watch`` reloads a config
file swapped the way the kubelet swaps a ConfigMap."""

from __future__ import annotations

import os
import signal
import socket
import textwrap
import uuid
from pathlib import Path

import httpx
import pytest

from .conftest import (
    Gateway,
    Process,
    Upstream,
    gateway_config,
    start_gateway,
    twistd_command,
    wait_until,
)

MESSAGES = [{"role": "user", "content": "hello"}]


def ready(admin_url: str, path: str = "/ready") -> tuple[int, dict[str, object]]:
    response = httpx.get(f"{admin_url}{path}", timeout=5)
    return response.status_code, response.json()


def test_sigterm_says_not_ready_first_serves_through_the_delay_then_drains(
    upstream: Upstream, tmp_path: Path
) -> None:
    gateway = start_gateway(
        textwrap.dedent(gateway_config(upstream.url)) + "shutdown_delay: 3s\nshutdown_grace: 20s\n",
        tmp_path,
    )
    hold = uuid.uuid4().hex
    try:
        assert ready(gateway.admin_url) == (200, {"status": "ready"})
        assert ready(gateway.admin_url, "/serving") == (200, {"status": "serving"})
        body = {
            "model": "test-model",
            "stream": True,
            "messages": MESSAGES,
            "test": {"chunks": 3, "hold": hold},
        }
        with (
            httpx.Client(timeout=20) as client,
            client.stream("POST", f"{gateway.url}/v1/chat/completions", json=body) as stream,
        ):
            pieces = stream.iter_bytes()
            first = next(pieces)
            gateway.process.popen.terminate()
            gateway.process.wait_for(r"/ready answers 503; accepting requests for 3s more")
            # Taken out of rotation, but still serving those who have not noticed.
            assert ready(gateway.admin_url) == (503, {"status": "draining"})
            assert ready(gateway.admin_url, "/serving") == (503, {"status": "draining"})
            late = httpx.post(
                f"{gateway.url}/v1/chat/completions",
                json={"model": "test-model", "messages": MESSAGES},
                timeout=10,
            )
            assert late.status_code == 200, late.text
            # After the delay: no new connections, the stream in progress goes on, and the
            # admin listener still answers.
            gateway.process.wait_for(r"waiting up to 20s for 1 requests")
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection(("127.0.0.1", gateway.port), timeout=5).close()
            assert ready(gateway.admin_url) == (503, {"status": "draining"})
            assert httpx.get(f"{gateway.admin_url}/healthz", timeout=5).status_code == 200
            upstream.release(hold)
            rest = b"".join(pieces)
        assert (first + rest).endswith(b"data: [DONE]\n\n")
        # twistd ends by the signal it was stopped with, once the shutdown is done.
        assert gateway.process.popen.wait(15) in (0, -signal.SIGTERM)
    finally:
        gateway.process.stop()


def swap_in(mount: Path, text: str) -> None:
    """Write *text* as ``filterproxy.yaml`` the way the kubelet updates a mounted
    ConfigMap: a new directory, then the ``..data`` symlink swapped in one rename."""
    version = mount / f"..{uuid.uuid4().hex}"
    version.mkdir()
    (version / "filterproxy.yaml").write_text(textwrap.dedent(text))
    link = mount / "..data_tmp"
    link.symlink_to(version.name)
    os.replace(link, mount / "..data")


def served_by(gateway_url: str) -> str | None:
    response = httpx.post(
        f"{gateway_url}/v1/chat/completions",
        json={"model": "test-model", "messages": MESSAGES},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    return response.headers.get("x-served-by")


def watched_config(upstream_url: str, served_by: str) -> str:
    return f"""
        config_watch: 100ms
        clusters:
          test: {{url: "{upstream_url}"}}
        filters:
          - type: body-accumulate
          - type: route
          - type: header-rewrite
            response_headers: {{set: {{x-served-by: {served_by}}}}}
        """


def test_config_watch_reloads_a_configmap_swapped_on_disk(
    upstream: Upstream, tmp_path: Path
) -> None:
    mount = tmp_path / "mount"
    mount.mkdir()
    swap_in(mount, watched_config(upstream.url, "first"))
    (mount / "filterproxy.yaml").symlink_to("..data/filterproxy.yaml")
    process = Process(
        twistd_command(mount / "filterproxy.yaml", "--listen", "tcp:0:interface=127.0.0.1")
    )
    gateway = Gateway(process, int(process.wait_for(r"filterproxy listening on .*port=(\d+)")[1]))
    try:
        assert served_by(gateway.url) == "first"
        swap_in(mount, watched_config(upstream.url, "second"))
        wait_until(lambda: served_by(gateway.url) == "second", 15)
        process.wait_for(r"changed on disk: .*filterproxy.yaml; reloading the config")
        # A broken version is refused; the one in force stays until a good one comes.
        swap_in(mount, "clusters: [not, a, mapping]\n")
        process.wait_for(r"config reload rejected")
        assert served_by(gateway.url) == "second"
        swap_in(mount, watched_config(upstream.url, "third"))
        wait_until(lambda: served_by(gateway.url) == "third", 15)
    finally:
        process.stop()
