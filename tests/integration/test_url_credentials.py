"""Credentials in a cluster URL (``http://user:secret@host``): sent upstream as HTTP basic
auth, as curl and the SDKs do with a URL's user information — unless a header rule sets
authorization — and written nowhere: not in the access log, ``/memory``, ``/metrics``,
the log, nor check-config's output."""

from __future__ import annotations

import base64
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import openai
import pytest

from .conftest import Upstream, closed_port, start_gateway

SECRET = "s3cret-pw"
FILTERPROXY = Path(sys.executable).parent / "filterproxy"


def _config(upstream: Upstream) -> str:
    port = upstream.port
    return f"""
        clusters:
          basic:
            url: "http://svc-user:{SECRET}@127.0.0.1:{port}"
          ruled:
            url: "http://svc-user:{SECRET}@127.0.0.1:{port}"
            request_headers: {{set: {{authorization: "Bearer from-the-rule"}}}}
          down:
            url: "http://svc-user:{SECRET}@127.0.0.1:{closed_port()}"
            outlier_detection: {{consecutive_failures: 1}}
            timeouts: {{connect: 2s}}
        routes:
          - {{models: ["basic-*"], cluster: basic}}
          - {{models: ["ruled-*"], cluster: ruled}}
          - {{models: ["down-*"], cluster: down}}
    """


def _authorization(upstream: Upstream) -> list[str]:
    return upstream.stats()["last_headers"].get("authorization", [])  # type: ignore[union-attr, no-any-return]


def test_a_urls_credentials_are_basic_auth_upstream_and_never_written(
    upstream: Upstream, tmp_path: Path
) -> None:
    gateway = start_gateway(_config(upstream), tmp_path)
    try:
        client = openai.OpenAI(
            base_url=f"{gateway.url}/v1", api_key="sk-client-key", max_retries=0, timeout=10
        )
        request_id = uuid.uuid4().hex
        answer = client.chat.completions.with_raw_response.create(
            model="basic-1",
            messages=[{"role": "user", "content": "hi"}],
            extra_headers={"x-request-id": request_id},
        )
        assert answer.http_response.status_code == 200
        expected = "Basic " + base64.b64encode(f"svc-user:{SECRET}".encode()).decode()
        assert _authorization(upstream) == [expected]

        # A header rule that sets authorization wins (and start-up said so).
        client.chat.completions.create(
            model="ruled-1", messages=[{"role": "user", "content": "hi"}]
        )
        assert _authorization(upstream) == ["Bearer from-the-rule"]
        assert "clusters.ruled: url 'http://svc-user:***@127.0.0.1" in gateway.process.output()

        # An endpoint that fails is ejected: a log line and a metric label name it.
        with pytest.raises(openai.APIStatusError):
            client.chat.completions.create(
                model="down-1", messages=[{"role": "user", "content": "hi"}]
            )
        gateway.process.wait_for(
            r"endpoint http://svc-user:\*\*\*@127\.0\.0\.1:\d+ of cluster down"
        )

        record = gateway.access_record(request_id)
        assert record["endpoint"] == f"http://svc-user:***@127.0.0.1:{upstream.port}"
        memory = httpx.get(f"{gateway.admin_url}/memory", timeout=10).text
        assert f"basic http://svc-user:***@127.0.0.1:{upstream.port}" in memory
        metrics = gateway.metrics()
        assert 'endpoint="http://svc-user:***@127.0.0.1:' in metrics
        config = httpx.get(f"{gateway.admin_url}/config", timeout=10).text
        for text in (memory, metrics, config, gateway.process.output()):
            assert SECRET not in text
            assert base64.b64encode(f"svc-user:{SECRET}".encode()).decode() not in text
    finally:
        gateway.process.stop()


def test_check_config_shows_a_urls_credentials_redacted(upstream: Upstream, tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(_config(upstream))
    checked = subprocess.run(
        [str(FILTERPROXY), "check-config", str(good)], capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stderr
    assert "basic: upstream at http://svc-user:***@127.0.0.1:" in checked.stdout
    assert "warning: clusters.ruled: url 'http://svc-user:***@" in checked.stdout
    assert SECRET not in checked.stdout + checked.stderr

    bad = tmp_path / "bad.yaml"
    bad.write_text(f'clusters: {{a: {{url: "http://svc-user:{SECRET}@127.0.0.1:port"}}}}\n')
    refused = subprocess.run(
        [str(FILTERPROXY), "check-config", str(bad)], capture_output=True, text=True
    )
    assert refused.returncode == 1
    assert "clusters.a.url" in refused.stderr and "svc-user:***@" in refused.stderr
    assert SECRET not in refused.stdout + refused.stderr
