"""The image as users run it: `podman run` with the demo config or theirs, the compiled
gateway as an unprivileged user, JSON logs, health on the admin listener, SIGTERM that
lets a stream finish."""

from __future__ import annotations

import json
import os
import re
import textwrap
from collections.abc import Callable
from pathlib import Path

import httpx
import openai

from tests.integration.conftest import wait_until

from .conftest import Container, podman

#: Peers' images, for the docs' comparison: the size asserted here is what they quote.
MAX_IMAGE_BYTES = 200 * 1024 * 1024


def test_the_image_is_small_unprivileged_compiled_and_has_nothing_to_build_with(
    image: str,
) -> None:
    (facts,) = json.loads(podman("image", "inspect", image))
    assert facts["Size"] < MAX_IMAGE_BYTES, facts["Size"]
    config = facts["Config"]
    assert config["User"] == "10001:10001"
    assert {"8080/tcp", "9901/tcp"} <= set(config["ExposedPorts"])
    assert "FILTERPROXY_WORKERS=1" in config["Env"]
    probe = podman(
        "run",
        "--rm",
        "--network",
        "none",
        "--entrypoint",
        "sh",
        image,
        "-c",
        "id -u; for tool in gcc cc make pip; do command -v $tool || echo no-$tool; done; "
        "python3 -c 'import filterproxy.chain.manager as m; print(m.__file__)'",
    ).split()
    assert probe[0] == "10001"
    assert probe[1:5] == ["no-gcc", "no-cc", "no-make", "no-pip"]
    assert probe[5].endswith(".so"), probe[5]  # the mypyc build


def test_the_demo_streams_with_workers_health_metrics_and_json_logs(
    run: Callable[..., Container],
) -> None:
    container = run({"FILTERPROXY_WORKERS": "2"})
    container.wait_ready()
    client = openai.OpenAI(base_url=f"{container.url}/v1", api_key="unused", max_retries=0)
    stream = client.chat.completions.create(
        model="demo", stream=True, messages=[{"role": "user", "content": "hi"}]
    )
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text == "Hello from the filterproxy demo upstream! You said: hi"
    # Each worker has its admin listener, on the admin port plus its index.
    for port in (container.admin_port, container.admin_port + 1):
        assert httpx.get(f"http://127.0.0.1:{port}/ready").json() == {"status": "ready"}
        assert httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200
    served = sum(
        float(line.rsplit(" ", 1)[1])
        for port in (container.admin_port, container.admin_port + 1)
        for line in httpx.get(f"http://127.0.0.1:{port}/metrics").text.splitlines()
        if line.startswith("filterproxy_requests_total{")
    )
    assert served == 1
    lines = [line for line in container.logs().splitlines() if line.strip()]
    assert any('"access"' in line for line in lines)
    for line in lines:
        assert isinstance(json.loads(line), dict), line


def test_a_mounted_config_replaces_the_demo_and_check_config_reads_it(
    image: str, run: Callable[..., Container], tmp_path: Path
) -> None:
    config = tmp_path / "filterproxy.yaml"
    config.write_text(
        textwrap.dedent("""
        mock_upstream: tcp:${DEMO_MOCK_PORT}:interface=127.0.0.1
        clusters:
          mine: {url: "http://127.0.0.1:${DEMO_MOCK_PORT}"}
        routes: [{models: [mine], cluster: mine}]
        """)
    )
    checked = podman(
        "run",
        "--rm",
        "--network",
        "none",
        "-e",
        "DEMO_MOCK_PORT=9",
        "-v",
        f"{config}:/etc/filterproxy/filterproxy.yaml:ro,Z",
        image,
        "check-config",
        "/etc/filterproxy/filterproxy.yaml",
    )
    assert "mine: upstream at http://127.0.0.1:9" in checked
    container = run({}, "-v", f"{config}:/etc/filterproxy/filterproxy.yaml:ro,Z")
    container.wait_ready()
    mine = httpx.post(
        f"{container.url}/v1/chat/completions",
        json={"model": "mine", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert mine.status_code == 200, mine.text
    demo = httpx.post(
        f"{container.url}/v1/chat/completions",
        json={"model": "demo", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert demo.status_code == 404  # the demo config is not in force


def test_sigterm_mid_stream_lets_the_stream_finish_then_exits(
    run: Callable[..., Container],
) -> None:
    container = run()
    container.wait_ready()
    # The demo upstream says back what it was told, a word every 50 ms: 80 words.
    prompt = " ".join(f"w{i}" for i in range(80))
    body = {"model": "demo", "stream": True, "messages": [{"role": "user", "content": prompt}]}
    with (
        httpx.Client(timeout=30) as client,
        client.stream("POST", f"{container.url}/v1/chat/completions", json=body) as response,
    ):
        pieces = response.iter_bytes()
        first = next(pieces)
        podman("kill", "--signal", "TERM", container.name)
        rest = b"".join(pieces)
    received = (first + rest).decode()
    # The demo prices its model: after [DONE], the stream's last line is its cost.
    _, done, cost = received.rpartition("data: [DONE]\n\n")
    assert done and re.fullmatch(r": cost_usd=0\.\d{9}\n\n", cost), received[-300:]
    assert '"content": " w79"' in received
    # A clean exit once the stream is done (twistd re-raises the signal it was stopped
    # with, which the kernel ignores for a container's first process).
    assert container.exit_code() == 0
    assert "waiting up to 30s for 1 requests in progress" in container.logs()


def test_auto_workers_follow_the_containers_cpu_limit(run: Callable[..., Container]) -> None:
    """``FILTERPROXY_WORKERS=auto``: one worker per CPU the container may use — under a
    limit of one CPU (a Kubernetes limit, ``--cpus``), one, whatever the machine has."""

    def listening(container: Container) -> int:
        return container.logs().count("filterproxy listening on")

    limited = run({"FILTERPROXY_WORKERS": "auto"}, "--cpus", "1")
    limited.wait_ready()
    assert listening(limited) == 1
    assert "worker 0 started" not in limited.logs()  # no supervisor: one process
    unlimited = run({"FILTERPROXY_WORKERS": "auto"})
    unlimited.wait_ready()
    cpus = len(os.sched_getaffinity(0))
    wait_until(lambda: listening(unlimited) == cpus, 30)
